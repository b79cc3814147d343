//! Which Docker engine a backend talks to: `--engine [NAME=]URL[,tls=DIR]`, connected with TLS
//! for anything but this host's unix socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::{Docker, API_DEFAULT_VERSION};

use super::super::BackendError;

/// Seconds any one Engine API request may take (bollard's default is 120 s; an engine that went
/// away should fail its sessions well before that). Long transfers (image loads, uploads,
/// commits) run without it, bounded by their progress instead (`transfer`).
const REQUEST_TIMEOUT: u64 = 60;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineSpec {
    /// How sessions, `doctor` and `session_start {engine}` name it.
    pub name: String,
    /// `None`: this host's engine (`DOCKER_HOST` or the default socket).
    pub url: Option<String>,
    /// Directory with `ca.pem`, `cert.pem`, `key.pem` (Docker's `DOCKER_CERT_PATH` layout).
    pub tls: Option<PathBuf>,
}

impl EngineSpec {
    /// This host's engine, as `--backend docker` without `--engine` uses it.
    pub fn local() -> Self {
        EngineSpec {
            name: "local".into(),
            url: None,
            tls: None,
        }
    }

    /// Parses `local`, `URL`, `NAME=URL` or either with `,tls=DIR`.
    pub fn parse(arg: &str) -> Result<Self, String> {
        let (main, tls) = match arg.split_once(",tls=") {
            Some((m, t)) if !t.is_empty() => (m, Some(PathBuf::from(t))),
            Some(_) => return Err(format!("engine {arg:?}: tls= needs a directory")),
            None => (arg, None),
        };
        if main == "local" {
            return Ok(EngineSpec {
                tls,
                ..Self::local()
            });
        }
        let (name, url) = match main.split_once('=') {
            Some((n, u)) => (n.to_string(), u.to_string()),
            None => (host_of(main), main.to_string()),
        };
        let scheme = url.split("://").next().unwrap_or_default();
        if !["unix", "tcp", "https", "http", "ssh"].contains(&scheme) || !url.contains("://") {
            return Err(format!(
                "engine {url:?}: valid forms are local, unix:///path, tcp://HOST:PORT (TLS), https://HOST:PORT"
            ));
        }
        if scheme == "ssh" {
            return Err(format!(
                "engine {url:?}: ssh:// is not built in (bollard's ssh transport is not enabled); reach the engine over tcp:// with TLS"
            ));
        }
        let valid_name = !name.is_empty()
            && name.len() <= 40
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
        if !valid_name {
            return Err(format!(
                "engine name {name:?}: use 1-40 letters, digits, '-', '_', '.', ':'"
            ));
        }
        Ok(EngineSpec {
            name,
            url: Some(url),
            tls,
        })
    }

    /// Whether QEMU in this engine's containers sees this host's files (bind mounts): this
    /// host's engine as `--backend docker` has always used it (`DOCKER_HOST` included), or one
    /// named by a `unix://` socket. Only an explicit `tcp://`/`https://` engine is remote.
    pub fn is_local(&self) -> bool {
        self.url.as_deref().is_none_or(|u| u.starts_with("unix://"))
    }

    /// Where this engine's client certificates are: `tls=`, else `DOCKER_CERT_PATH`, else
    /// `~/.docker` when it has them.
    fn cert_dir(&self) -> Option<PathBuf> {
        self.tls.clone().or_else(|| {
            let dir = std::env::var_os("DOCKER_CERT_PATH")
                .map(PathBuf::from)
                .or_else(|| directories::BaseDirs::new().map(|d| d.home_dir().join(".docker")))?;
            dir.join("ca.pem").is_file().then_some(dir)
        })
    }

    /// Connects and checks that the engine answers within 3 s.
    pub async fn connect(&self, insecure: bool) -> Result<Docker, BackendError> {
        let docker = self.client(insecure)?;
        match tokio::time::timeout(Duration::from_secs(3), docker.ping()).await {
            Ok(Ok(_)) => Ok(docker),
            Ok(Err(e)) => Err(BackendError::Setup(format!(
                "engine {} did not answer{}: {e}",
                self.name,
                if self.url.is_none() {
                    " (is dockerd running? `deskvm setup` starts it)"
                } else {
                    ""
                }
            ))),
            Err(_) => Err(BackendError::Setup(format!(
                "engine {} did not answer within 3 s",
                self.name
            ))),
        }
    }

    fn client(&self, insecure: bool) -> Result<Docker, BackendError> {
        self.client_with(self.cert_dir(), insecure)
    }

    fn client_with(&self, certs: Option<PathBuf>, insecure: bool) -> Result<Docker, BackendError> {
        let fail = |e: bollard::errors::Error| {
            BackendError::Setup(format!("cannot reach engine {}: {e}", self.name))
        };
        let url = match &self.url {
            None => return Docker::connect_with_defaults().map_err(fail),
            Some(u) => u,
        };
        if url.starts_with("unix://") {
            return Docker::connect_with_unix(url, REQUEST_TIMEOUT, API_DEFAULT_VERSION)
                .map_err(fail);
        }
        match certs {
            Some(dir) => {
                for f in ["ca.pem", "cert.pem", "key.pem"] {
                    if !dir.join(f).is_file() {
                        return Err(BackendError::Setup(format!(
                            "engine {}: {} has no {f} (a TLS dir holds ca.pem, cert.pem and key.pem)",
                            self.name,
                            dir.display()
                        )));
                    }
                }
                let https = url.replacen("tcp://", "https://", 1).replacen("http://", "https://", 1);
                Docker::connect_with_ssl(
                    &https,
                    &dir.join("key.pem"),
                    &dir.join("cert.pem"),
                    &dir.join("ca.pem"),
                    REQUEST_TIMEOUT,
                    API_DEFAULT_VERSION,
                )
                .map_err(fail)
            }
            None if url.starts_with("https://") => Err(BackendError::Setup(format!(
                "engine {} ({url}): https:// needs `,tls=DIR` with ca.pem, cert.pem and key.pem (or DOCKER_CERT_PATH)",
                self.name
            ))),
            None if insecure => {
                tracing::warn!(engine = %self.name, "talking to a Docker engine without TLS (--insecure-engine)");
                let http = url.to_string();
                Docker::connect_with_http(&http, REQUEST_TIMEOUT, API_DEFAULT_VERSION)
                    .map_err(fail)
            }
            None => Err(BackendError::Setup(format!(
                "engine {} ({url}): remote engines need TLS; give `,tls=DIR` with ca.pem, cert.pem and key.pem (or set DOCKER_CERT_PATH), or --insecure-engine for a test",
                self.name
            ))),
        }
    }
}

/// A default engine name: `HOST:PORT` of a URL, or the socket's file name for `unix://`.
fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.trim_end_matches('/');
    match url.starts_with("unix://") {
        true => rest.rsplit('/').next().unwrap_or(rest).to_string(),
        false => rest.to_string(),
    }
}

/// The container-side path of a file in the image cache, as the guest image carries it.
pub fn in_image(cache: &Path, host: &Path) -> Option<PathBuf> {
    host.strip_prefix(cache)
        .ok()
        .map(|rel| Path::new(super::guest::CACHE_IN_IMAGE).join(rel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_arguments_parse_or_say_what_is_valid() {
        assert_eq!(EngineSpec::parse("local").unwrap(), EngineSpec::local());
        let e = EngineSpec::parse("far=tcp://10.0.0.2:2376,tls=/c").unwrap();
        assert_eq!(e.name, "far");
        assert_eq!(e.url.as_deref(), Some("tcp://10.0.0.2:2376"));
        assert_eq!(e.tls.as_deref(), Some(Path::new("/c")));
        assert!(!e.is_local());
        let e = EngineSpec::parse("tcp://h:2376").unwrap();
        assert_eq!(e.name, "h:2376");
        assert!(EngineSpec::parse("unix:///run/d.sock").unwrap().is_local());
        assert!(EngineSpec::parse("ftp://x")
            .unwrap_err()
            .contains("valid forms"));
        assert!(EngineSpec::parse("ssh://u@h")
            .unwrap_err()
            .contains("ssh://"));
        assert!(EngineSpec::parse("a b=tcp://h:1")
            .unwrap_err()
            .contains("engine name"));
        assert!(EngineSpec::parse("x=tcp://h:1,tls=")
            .unwrap_err()
            .contains("tls="));
    }

    #[tokio::test]
    async fn plain_tcp_is_refused_without_insecure_engine() {
        let e = EngineSpec::parse("x=tcp://127.0.0.1:9,tls=/nonexistent").unwrap();
        let err = e.client(false).unwrap_err().to_string();
        assert!(err.contains("has no ca.pem"), "{err}");
        let e = EngineSpec::parse("x=tcp://127.0.0.1:9").unwrap();
        let err = e.client_with(None, false).unwrap_err().to_string();
        assert!(err.contains("need TLS"), "{err}");
        assert!(e.client_with(None, true).is_ok());
    }
}
