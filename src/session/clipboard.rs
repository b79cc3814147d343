//! The guest's X clipboard and primary selection, through xclip run as the desktop user.

use std::time::Instant;

use serde_json::{json, Value};

use super::error::SessionError;
use super::files::q;
use super::lane::as_user;
use super::{Session, SessionManager};

/// The largest clipboard text.
pub const MAX_CLIPBOARD_BYTES: usize = 1024 * 1024;

impl SessionManager {
    pub async fn clipboard_set(
        &self,
        id: &str,
        text: &str,
        primary: bool,
        secret: bool,
    ) -> Result<Value, SessionError> {
        let started = Instant::now();
        let shown = crate::ledger::redact::text(text, secret);
        let args = json!({ "text": shown, "secret": secret, "selection": selection(primary) });
        let session = self
            .session_for("clipboard_set", id, &args, started)
            .await?;
        let result = session.clipboard_set(text, primary).await;
        let recorded = result.as_ref().map(|v| {
            if secret {
                json!({ "chars": v["chars"] })
            } else {
                v.clone()
            }
        });
        self.record_on(
            &session,
            "clipboard_set",
            args,
            recorded.as_ref().map_err(|e| *e),
            started,
        );
        result
    }

    pub async fn clipboard_get(&self, id: &str, primary: bool) -> Result<Value, SessionError> {
        let started = Instant::now();
        let args = json!({ "selection": selection(primary) });
        let session = self
            .session_for("clipboard_get", id, &args, started)
            .await?;
        let result = session.clipboard_get(primary).await;
        let recorded = result
            .as_ref()
            .map(|v| json!({ "chars": v["text"].as_str().unwrap_or_default().chars().count() }));
        self.record_on(
            &session,
            "clipboard_get",
            args,
            recorded.as_ref().map_err(|e| *e),
            started,
        );
        result
    }
}

fn selection(primary: bool) -> &'static str {
    if primary {
        "primary"
    } else {
        "clipboard"
    }
}

impl Session {
    /// xclip as the desktop user (the X selections belong to its session); it stays in the
    /// background owning the selection, its output closed so the agent's exec can finish.
    /// `run`: the shell command that uses xclip.
    fn xclip(&self, user: Option<&str>, run: &str) -> String {
        let cmd = format!("command -v xclip >/dev/null || {{ echo 'xclip is not installed in this image (the workstation image has it)' >&2; exit 127; }}; {run}");
        match user {
            Some(u) => as_user(u, &cmd),
            None => format!("DISPLAY=:0 sh -c {}", q(&cmd)),
        }
    }

    async fn clipboard_set(&self, text: &str, primary: bool) -> Result<Value, SessionError> {
        if text.len() > MAX_CLIPBOARD_BYTES {
            return Err(SessionError::InvalidParams(format!(
                "text is {} bytes; at most {MAX_CLIPBOARD_BYTES}",
                text.len()
            )));
        }
        let user = self.owner(false).await;
        let script = self.xclip(
            user.as_deref(),
            // Its errors (no display, say) come before it forks into the background, which
            // keeps no pipe of the agent's open: they go through a file.
            &format!(
                "e=$(mktemp) || exit 1; xclip -selection {} -in >/dev/null 2>\"$e\"; rc=$?; cat \"$e\" >&2; rm -f \"$e\"; exit $rc",
                selection(primary)
            ),
        );
        self.clip_sh(&script, Some(text.as_bytes().to_vec()), false)
            .await?;
        Ok(json!({ "chars": text.chars().count(), "selection": selection(primary) }))
    }

    async fn clipboard_get(&self, primary: bool) -> Result<Value, SessionError> {
        let user = self.owner(false).await;
        let script = self.xclip(
            user.as_deref(),
            &format!("xclip -selection {} -out", selection(primary)),
        );
        let text = self.clip_sh(&script, None, true).await?;
        Ok(json!({ "text": text, "selection": selection(primary) }))
    }

    /// A clipboard command; no xclip in the image is `unavailable`; reading (`get`) an empty
    /// selection is "".
    async fn clip_sh(
        &self,
        script: &str,
        input: Option<Vec<u8>>,
        get: bool,
    ) -> Result<String, SessionError> {
        match self.root_sh("clipboard", script, input).await {
            Err(SessionError::Setup(m)) if m.contains("exit 127") => {
                Err(SessionError::Unavailable {
                    what: "the clipboard",
                    why: "xclip is not installed in this image (the workstation image has it)"
                        .into(),
                })
            }
            // xclip -out with nothing selected says "Error: target STRING not available".
            Err(SessionError::Setup(m)) if get && m.contains("not available") => Ok(String::new()),
            other => other,
        }
    }
}
