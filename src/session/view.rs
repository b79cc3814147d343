//! `session_view`: a link a person opens to watch a session (or, with `control`, to use it).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{check_range, record, Caller, Session, SessionError, SessionManager};
use crate::view::{self, Views};

impl Session {
    pub fn id(&self) -> &str {
        &self.info.session_id
    }

    pub fn view(&self) -> &Arc<crate::view::SessionView> {
        &self.view
    }

    pub(super) fn append_human(&self, burst: &crate::view::human::Burst) -> Option<u64> {
        match self.ledger.append("human_input", burst.to_json()) {
            Ok(seq) => Some(seq),
            Err(e) => {
                tracing::error!(error = %e, session = %self.info.session_id, "could not record a person's input in the review ledger");
                None
            }
        }
    }

    /// Records a burst of a person's input (control view), and the screen after it unless the
    /// agent's last action is still waiting for its own after-frame (taking the slot would
    /// cancel that capture).
    pub fn record_human(self: &Arc<Self>, burst: crate::view::human::Burst) {
        let Some(seq) = self.append_human(&burst) else {
            return;
        };
        let busy = self
            .after
            .lock()
            .expect("capture slot poisoned")
            .as_ref()
            .is_some_and(record::AfterFrame::running);
        if !busy {
            record::spawn_after_frame(self, seq);
        }
    }
}

impl SessionManager {
    pub fn views(&self) -> &Arc<Views> {
        &self.views
    }

    /// A new view link of session `id`; recorded in its ledger without the link's token.
    pub async fn view(
        &self,
        id: &str,
        control: bool,
        expires_in_s: Option<u64>,
    ) -> Result<Value, SessionError> {
        let started = Instant::now();
        let args = json!({ "control": control, "expires_in_s": expires_in_s });
        let session = self.session_for("session_view", id, &args, started).await?;
        let issued = (|| {
            let ttl = match expires_in_s {
                Some(s) => Duration::from_secs(check_range("expires_in_s", s, view::TTL_RANGE_S)?),
                None => view::DEFAULT_TTL,
            };
            session.check_alive()?;
            if view::novnc_dir().is_none() {
                return Err(SessionError::ViewUnavailable(format!(
                    "the noVNC web client is not installed on the deskvm host (looked in {}; \
                     `deskvm setup` or `apt-get install novnc` installs it, DESKVM_NOVNC_DIR points elsewhere)",
                    view::NOVNC_DIR
                )));
            }
            let caller = Caller::current();
            let base = self.views.base_for(caller.host.as_deref()).ok_or_else(|| {
                SessionError::ViewUnavailable("this server has no view listener".into())
            })?;
            let principal = caller.principal;
            let bearer = principal.is_some();
            let (token, grant) = self.views.issue(&session, control, ttl, principal);
            let expires_at = humantime::format_rfc3339_seconds(grant.expires_at).to_string();
            let mut out = json!({
                "session_id": id,
                "url": format!("{base}/view/{token}"),
                "mode": grant.mode(),
                "expires_at": expires_at,
                "expires_in_s": ttl.as_secs(),
                "viewers": session.view().viewers(),
                "listener": base,
                "needs_token": bearer,
            });
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
            out["note"] = note.into();
            session.touch();
            Ok(out)
        })();
        let recorded = match &issued {
            // The token is the key to the desktop: it stays out of the review.
            Ok(out) => {
                let mut kept = out.clone();
                if let Some(o) = kept.as_object_mut() {
                    o.remove("url");
                    o.remove("note");
                }
                session
                    .record_ok("", "session_view", args, kept, started)
                    .map(|_| ())
            }
            Err(e) => record::append_call(
                &session.ledger,
                "",
                "session_view",
                args,
                Err(e),
                started,
                &Default::default(),
            )
            .map(|_| ())
            .map_err(SessionError::Ledger),
        };
        if let Err(e) = recorded {
            tracing::error!(error = %super::chain(&e), "could not record session_view");
        }
        issued
    }
}
