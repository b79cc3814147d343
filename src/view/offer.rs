//! `session_view`: a link a person opens to watch a session (or, with `control`, to use it).
//! The session runs and records the call ([`SessionManager::call_recorded`]); the link, its
//! token and where it is served are this room's.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::Views;
use crate::session::{check_range, Caller, Session, SessionError, SessionManager};

impl Views {
    /// A new view link of session `id`; recorded in its ledger without the link's token.
    pub async fn offer(
        &self,
        manager: &SessionManager,
        id: &str,
        control: bool,
        expires_in_s: Option<u64>,
    ) -> Result<Value, SessionError> {
        let args = json!({ "control": control, "expires_in_s": expires_in_s });
        let issue = |session: &Arc<Session>| self.link_to(session, control, expires_in_s);
        manager
            .call_recorded("session_view", id, args, issue, without_token)
            .await
    }

    fn link_to(
        &self,
        session: &Arc<Session>,
        control: bool,
        expires_in_s: Option<u64>,
    ) -> Result<Value, SessionError> {
        let ttl = match expires_in_s {
            Some(s) => Duration::from_secs(check_range("expires_in_s", s, super::TTL_RANGE_S)?),
            None => super::DEFAULT_TTL,
        };
        session.check_alive()?;
        if super::novnc_dir().is_none() {
            return Err(SessionError::ViewUnavailable(format!(
                "the noVNC web client is not installed on the deskvm host (looked in {}; \
                 `deskvm setup` or `apt-get install novnc` installs it, DESKVM_NOVNC_DIR points elsewhere)",
                super::NOVNC_DIR
            )));
        }
        let caller = Caller::current();
        let base = self.base_for(caller.host.as_deref()).ok_or_else(|| {
            SessionError::ViewUnavailable("this server has no view listener".into())
        })?;
        let bearer = caller.principal.is_some();
        let (token, grant) = self.issue(session, control, ttl, caller.principal);
        let expires_at = humantime::format_rfc3339_seconds(grant.expires_at).to_string();
        let mut out = json!({
            "session_id": session.id(),
            "url": format!("{base}/view/{token}"),
            "mode": grant.mode(),
            "expires_at": expires_at,
            "expires_in_s": ttl.as_secs(),
            "viewers": session.view().count(),
            "listener": base,
            "needs_token": bearer,
        });
        out["note"] = note(control, bearer).into();
        session.touch();
        Ok(out)
    }
}

/// What the agent is told to do with the link.
fn note(control: bool, bearer: bool) -> String {
    let mut note = if control {
        "Open the URL in a browser: the person's mouse and keyboard reach the desktop, and \
         what they do goes into the review as human_input events. Anyone with the URL has \
         that control until it expires or the session stops."
            .to_string()
    } else {
        "Open the URL in a browser to watch the desktop live (view only).".to_string()
    };
    if bearer {
        note.push_str(
            " This server asks for its bearer token: the first time, append \
             ?token=<your token> (it is then kept in a cookie).",
        );
    }
    note
}

/// The reply as the review keeps it: the token is the key to the desktop, so the URL (and the
/// note around it) stay out.
fn without_token(out: &Value) -> Value {
    let mut kept = out.clone();
    if let Some(o) = kept.as_object_mut() {
        o.remove("url");
        o.remove("note");
    }
    kept
}
