//! Files in and out of the guest and its clipboard, through the guest agent (so they work
//! wherever QEMU runs, remote engines included, and need no guest network). Every call is
//! checked before anything is written, and recorded with path, size and sha256, never the
//! content (unless the operator keeps copies: `--review-files`).

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::error::SessionError;
use super::{Session, SessionManager};

/// The largest file `upload` writes and `download` reads.
/// 10 MiB is 13.4 MB of base64 in one JSON-RPC message: inside the 16 MiB a line may have on
/// rmcp's stdio transport (server and client) and the HTTP client's response limit, and inside
/// the default `--max-body-bytes`.
pub const MAX_FILE_BYTES: usize = 10 * 1024 * 1024;
const AGENT_WAIT: Duration = Duration::from_secs(30);
/// Exit codes of the guest-side checks: a request the guest's files refuse (the caller's to
/// fix), and a file that is already there.
const INVALID: i64 = 65;
const EXISTS: i64 = 66;

/// An upload, decoded and checked (the tool's parameters, minus the session).
pub struct Upload {
    pub path: String,
    pub data: Vec<u8>,
    pub mode: u32,
    pub create_dirs: bool,
    pub overwrite: bool,
    pub root: bool,
}

impl Upload {
    /// Checks the parameters as an agent sent them; `content` is base64.
    pub fn check(
        path: String,
        content: &str,
        mode: Option<&Value>,
        flags: (bool, bool, bool),
    ) -> Result<Self, SessionError> {
        check_path(&path)?;
        // Refused before decoding: base64 is 4/3 of the bytes it carries.
        if content.len() > MAX_FILE_BYTES.div_ceil(3) * 4 + 4 {
            return Err(too_big(content.len() / 4 * 3));
        }
        use base64::Engine;
        let data = base64::engine::general_purpose::STANDARD
            .decode(content.trim())
            .map_err(|e| {
                SessionError::InvalidParams(format!(
                    "content is not base64 (standard alphabet, padded): {e}"
                ))
            })?;
        if data.len() > MAX_FILE_BYTES {
            return Err(too_big(data.len()));
        }
        let mode = parse_mode(mode)?;
        let (create_dirs, overwrite, root) = flags;
        Ok(Upload {
            path,
            data,
            mode,
            create_dirs,
            overwrite,
            root,
        })
    }
}

fn too_big(n: usize) -> SessionError {
    SessionError::InvalidParams(format!(
        "the file is {n} bytes; at most {MAX_FILE_BYTES} bytes (10 MiB) go through upload and download"
    ))
}

/// An absolute guest path without NUL, `..` or a trailing slash.
fn check_path(path: &str) -> Result<(), SessionError> {
    let why = if !path.starts_with('/') {
        "must be absolute (start with /)"
    } else if path.contains('\0') || path.contains('\n') {
        "must not contain NUL or newline characters"
    } else if path.split('/').any(|c| c == "..") {
        "must not contain .. components"
    } else if path.ends_with('/') || path.len() > 4096 {
        "must name a file (no trailing /, at most 4096 bytes)"
    } else {
        return Ok(());
    };
    Err(SessionError::InvalidParams(format!("path {path:?} {why}")))
}

fn parse_mode(mode: Option<&Value>) -> Result<u32, SessionError> {
    let bad = |v: &Value| {
        SessionError::InvalidParams(format!("mode {v} is not a permission mode; give 0..=4095 (e.g. 420) or an octal string like \"0644\""))
    };
    let m = match mode {
        None | Some(Value::Null) => return Ok(0o644),
        Some(v @ Value::Number(n)) => n.as_u64().ok_or_else(|| bad(v))?,
        Some(v @ Value::String(s)) => {
            u64::from_str_radix(s.trim_start_matches("0o"), 8).map_err(|_| bad(v))?
        }
        Some(v) => return Err(bad(v)),
    };
    u32::try_from(m)
        .ok()
        .filter(|&m| m <= 0o7777)
        .ok_or_else(|| bad(mode.unwrap_or(&Value::Null)))
}

pub fn sha256_hex(data: &[u8]) -> String {
    crate::vm::spec::hex(&Sha256::digest(data))
}

/// Single-quotes `s` for sh.
pub(super) fn q(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// What a downloaded file is: its bytes, and whether they read as text.
pub struct Downloaded {
    pub path: String,
    pub data: Vec<u8>,
    pub sha256: String,
    pub text: bool,
}

impl SessionManager {
    /// `path`: as the agent gave it, recorded even when `up` was refused.
    pub async fn upload(
        &self,
        id: &str,
        path: &str,
        up: Result<Upload, SessionError>,
    ) -> Result<Value, SessionError> {
        let started = Instant::now();
        let args = match &up {
            Ok(u) => {
                json!({ "path": u.path, "size": u.data.len(), "sha256": sha256_hex(&u.data), "mode": format!("{:04o}", u.mode), "create_dirs": u.create_dirs, "overwrite": u.overwrite, "root": u.root })
            }
            Err(_) => json!({ "path": path }),
        };
        let session = self.session_for("upload", id, &args, started).await?;
        let result = match up {
            Ok(u) => session
                .upload(&u)
                .await
                .map(|v| self.keep_file(&session, v, &u.data)),
            Err(e) => Err(e),
        };
        self.record_on(&session, "upload", args, result.as_ref(), started);
        result
    }

    pub async fn download(&self, id: &str, path: &str) -> Result<Downloaded, SessionError> {
        let started = Instant::now();
        let args = json!({ "path": path });
        let session = self.session_for("download", id, &args, started).await?;
        let result = match check_path(path) {
            Ok(()) => session.download(path).await,
            Err(e) => Err(e),
        };
        let recorded = result.as_ref().map(|d| {
            let v =
                json!({ "path": d.path, "size": d.data.len(), "sha256": d.sha256, "text": d.text });
            self.keep_file(&session, v, &d.data)
        });
        self.record_on(
            &session,
            "download",
            args,
            recorded.as_ref().map_err(|e| *e),
            started,
        );
        result
    }

    /// With `--review-files`, a copy of the file in the review, named in the recorded
    /// outcome `v` as `kept` (the review links it); otherwise `v` as it is.
    fn keep_file(&self, session: &Session, mut v: Value, data: &[u8]) -> Value {
        if self.cfg.net.review_files {
            let sha = v["sha256"].as_str().unwrap_or_default().to_string();
            match crate::ledger::kept::keep(&session.ledger.dir, &sha, data) {
                Ok(r) => v["kept"] = json!(r),
                Err(e) => {
                    tracing::warn!(error = %e, "could not keep a copy of the file in the review")
                }
            }
        }
        v
    }
}

impl Session {
    /// Runs `script` as root in the guest (stdin: `input`), failing on a non-zero exit with
    /// its stderr.
    pub(super) async fn root_sh(
        &self,
        what: &'static str,
        script: &str,
        input: Option<Vec<u8>>,
    ) -> Result<String, SessionError> {
        self.touch();
        let lane = self.lane.lock().await;
        if !lane.guest().agent {
            return Err(SessionError::Unavailable {
                what,
                why: format!(
                    "no QEMU guest agent answers in image {}",
                    lane.guest().image
                ),
            });
        }
        let agent = lane.vm().agent(AGENT_WAIT).await?;
        let timeout = Duration::from_secs(60);
        let out = match input {
            Some(i) => agent.sh_input(script, i, timeout).await,
            None => agent.sh(script, timeout, None).await,
        }
        .map_err(crate::vm::VmError::from)?;
        let said = out.stderr.trim().to_string();
        match out.exit_code {
            0 => {}
            INVALID => return Err(SessionError::InvalidParams(said)),
            EXISTS => return Err(SessionError::Exists { path: said }),
            _ => {
                return Err(SessionError::Setup(format!(
                    "{what} failed in the guest (exit {}): {said}",
                    out.exit_code
                )))
            }
        }
        Ok(out.stdout)
    }

    /// The user a file belongs to: the desktop user unless `root` (or the image has none).
    pub(super) async fn owner(&self, root: bool) -> Option<String> {
        let lane = self.lane.lock().await;
        lane.guest().user.clone().filter(|_| !root)
    }

    async fn upload(&self, u: &Upload) -> Result<Value, SessionError> {
        let path = q(&u.path);
        let owner = self.owner(u.root).await;
        // Checked in the guest before a byte is written: the parent (made only on request,
        // as the file's owner) and an existing file (replaced only on request). The bytes go
        // to a root-only directory beside the target, so nobody swaps the file for a link
        // before it is handed over; a failed upload leaves no half file.
        let mkdir = match owner.is_some() {
            true => "/usr/local/bin/deskvm-as-user mkdir -p \"$d\"",
            false => "mkdir -p \"$d\"",
        };
        let check = format!(
            "p={path}; d=$(dirname \"$p\"); \
             if [ -d \"$p\" ]; then echo \"$p is a directory\" >&2; exit {INVALID}; fi; \
             if [ -e \"$p\" ] && [ {ow} = 0 ]; then echo \"$p\" >&2; exit {EXISTS}; fi; \
             if [ ! -d \"$d\" ]; then if [ {cd} = 1 ]; then {mkdir} || exit 1; \
             else echo \"the directory $d does not exist (pass create_dirs: true to make it)\" >&2; exit {INVALID}; fi; fi; \
             mktemp -d \"$d/.deskvm-upload.XXXXXX\"",
            ow = u8::from(u.overwrite),
            cd = u8::from(u.create_dirs),
        );
        let dir = self
            .root_sh("upload", &check, None)
            .await?
            .trim()
            .to_string();
        let tmp = format!("{dir}/f");
        let written = {
            let lane = self.lane.lock().await;
            let agent = lane.vm().agent(AGENT_WAIT).await?;
            agent
                .write_file(&tmp, &u.data)
                .await
                .map_err(crate::vm::VmError::from)
        };
        let chown = owner
            .map(|o| format!("chown {}: \"$f\" && ", q(&o)))
            .unwrap_or_default();
        // `ln` fails on a file that appeared since the check; `mv` replaces only the name.
        let place = match u.overwrite {
            true => "mv -f \"$f\" \"$p\"".to_string(),
            false => format!("{{ ln \"$f\" \"$p\" 2>/dev/null || {{ echo \"$p\" >&2; rm -rf \"$t\"; exit {EXISTS}; }}; }}"),
        };
        let finish = format!(
            "t={}; f=\"$t/f\"; p={path}; {chown}chmod {:o} \"$f\" && {place} && rm -rf \"$t\"",
            q(&dir),
            u.mode
        );
        let finished = match written {
            Ok(()) => self.root_sh("upload", &finish, None).await.map(drop),
            Err(e) => Err(e.into()),
        };
        if let Err(e) = finished {
            let _ = self
                .root_sh("upload", &format!("rm -rf {}", q(&dir)), None)
                .await;
            return Err(e);
        }
        Ok(
            json!({ "path": u.path, "size": u.data.len(), "sha256": sha256_hex(&u.data), "mode": format!("{:04o}", u.mode) }),
        )
    }

    async fn download(&self, path: &str) -> Result<Downloaded, SessionError> {
        let check = format!(
            "p={}; if [ ! -e \"$p\" ]; then echo \"$p does not exist\" >&2; exit {INVALID}; fi; \
             if [ ! -f \"$p\" ]; then echo \"$p is not a regular file\" >&2; exit {INVALID}; fi; stat -c %s \"$p\"",
            q(path)
        );
        let size: usize = self
            .root_sh("download", &check, None)
            .await?
            .trim()
            .parse()
            .unwrap_or(0);
        if size > MAX_FILE_BYTES {
            return Err(too_big(size));
        }
        let data = {
            let lane = self.lane.lock().await;
            let agent = lane.vm().agent(AGENT_WAIT).await?;
            agent
                .read_file(path, MAX_FILE_BYTES)
                .await
                .map_err(crate::vm::VmError::from)?
        };
        let text = !data.contains(&0) && std::str::from_utf8(&data).is_ok();
        Ok(Downloaded {
            path: path.to_string(),
            sha256: sha256_hex(&data),
            data,
            text,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn b64(d: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(d)
    }

    #[test]
    fn uploads_are_checked_before_anything_runs() {
        let ok = Upload::check(
            "/root/a b/x.bin".into(),
            &b64(b"hi"),
            None,
            (false, false, false),
        )
        .unwrap();
        assert_eq!((ok.data.as_slice(), ok.mode), (&b"hi"[..], 0o644));
        let kind =
            |r: Result<Upload, SessionError>| r.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(kind(Upload::check(
            "rel/x".into(),
            "",
            None,
            (false, false, false)
        ))
        .contains("absolute"));
        assert!(kind(Upload::check(
            "/a/../b".into(),
            "",
            None,
            (false, false, false)
        ))
        .contains(".."));
        assert!(kind(Upload::check(
            "/a".into(),
            "!!",
            None,
            (false, false, false)
        ))
        .contains("base64"));
        let big = b64(&vec![0u8; MAX_FILE_BYTES + 1]);
        assert!(kind(Upload::check(
            "/a".into(),
            &big,
            None,
            (false, false, false)
        ))
        .contains("10485760"));
        let m =
            Upload::check("/a".into(), "", Some(&json!("0755")), (false, false, false)).unwrap();
        assert_eq!(m.mode, 0o755);
        assert!(kind(Upload::check(
            "/a".into(),
            "",
            Some(&json!(70000)),
            (false, false, false)
        ))
        .contains("mode"));
    }

    #[test]
    fn quoting_survives_quotes() {
        assert_eq!(q("it's"), r"'it'\''s'");
    }
}
