//! `deskvm cp`: copy a file into or out of a running session, for scripts. It talks to a
//! `deskvm serve --http` like any MCP client (upload / download), so it works wherever the
//! session runs.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::client::Client;

/// One side of a copy: a file here, or `SESSION:/path` in a guest.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Local(PathBuf),
    Guest { session: String, path: String },
}

/// `SESSION:/abs/path` is a guest file (session ids are hex, so a local path with a colon
/// before its first slash, such as `./a:b`, stays local).
fn end(s: &str) -> End {
    match s.split_once(':') {
        Some((sid, path))
            if !sid.is_empty()
                && sid
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                && path.starts_with('/') =>
        {
            End::Guest {
                session: sid.to_string(),
                path: path.to_string(),
            }
        }
        _ => End::Local(PathBuf::from(s)),
    }
}

pub async fn run(src: &str, dst: &str, url: &str, token_file: Option<&Path>) -> Result<()> {
    let (from, to) = (end(src), end(dst));
    if matches!(
        (&from, &to),
        (End::Local(_), End::Local(_)) | (End::Guest { .. }, End::Guest { .. })
    ) {
        bail!("deskvm cp: exactly one side must be SESSION:/absolute/path in a guest and the other a local file (got {src:?} and {dst:?})");
    }
    let token = match token_file {
        Some(f) => Some(first_secret(f)?),
        None => std::env::var("DESKVM_TOKEN").ok().filter(|t| !t.is_empty()),
    };
    let client = Client::connect_http(url, token.as_deref())
        .await
        .with_context(|| format!("connecting to the deskvm server at {url} (start one with `deskvm serve --http ADDR`; set --url or DESKVM_URL)"))?;
    let result = copy(&client, from, to).await;
    let _ = client.close().await;
    result
}

async fn copy(client: &Client, from: End, to: End) -> Result<()> {
    match (from, to) {
        (End::Local(local), End::Guest { session, path }) => {
            let data =
                std::fs::read(&local).with_context(|| format!("reading {}", local.display()))?;
            let v = client.upload(&session, &path, &data).await?;
            eprintln!(
                "{} -> {session}:{path} ({} bytes, sha256 {})",
                local.display(),
                v["size"],
                v["sha256"].as_str().unwrap_or_default()
            );
        }
        (End::Guest { session, path }, End::Local(local)) => {
            let (data, v) = client.download(&session, &path).await?;
            std::fs::write(&local, &data)
                .with_context(|| format!("writing {}", local.display()))?;
            eprintln!(
                "{session}:{path} -> {} ({} bytes, sha256 {})",
                local.display(),
                data.len(),
                v["sha256"].as_str().unwrap_or_default()
            );
        }
        _ => unreachable!("checked in run"),
    }
    Ok(())
}

/// The secret of the token file's first token (`name:secret` or `secret`).
fn first_secret(file: &Path) -> Result<String> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading the token file {}", file.display()))?;
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split_once(':').map_or(l, |(_, s)| s))
        .and_then(|s| s.split_whitespace().next())
        .map(str::to_string)
        .with_context(|| format!("no token in {}", file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_are_guest_only_with_an_id_and_an_absolute_path() {
        assert_eq!(
            end("ab12:/root/x"),
            End::Guest {
                session: "ab12".into(),
                path: "/root/x".into()
            }
        );
        assert_eq!(end("./a:b"), End::Local("./a:b".into()));
        assert_eq!(end("ab12:rel"), End::Local("ab12:rel".into()));
        assert_eq!(end("/tmp/x"), End::Local("/tmp/x".into()));
    }
}
