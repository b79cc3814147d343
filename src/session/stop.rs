//! Stopping a session: its viewers cut off, its VM ended, its runtime dir removed, and its
//! ledger closed with the stop on record (session_stop here; the idle timeout and shutdown in
//! `idle`).

use std::time::Instant;

use serde_json::json;

use super::ledgers::append_call;
use super::{Session, SessionError, SessionManager};

impl Session {
    /// Ends the VM and removes the runtime dir (the ledger stays).
    pub(super) async fn end(&self) -> Result<(), crate::storage::IoError> {
        // Viewers go first: no person's input reaches a VM being stopped, and what they did
        // is on record before the stop is.
        self.viewers.close();
        self.record_pending_human();
        self.finish_capture().await;
        let mut lane = self.lane.lock().await;
        let alive = self.check_alive().is_ok();
        lane.stop_vm(alive).await;
        // Its open connections end now, and their decisions are on record before the stop.
        let wiring = self.wiring.lock().expect("wiring poisoned").take();
        if let Some(w) = wiring {
            w.stop().await;
        }
        crate::storage::remove_session_dirs(&self.files)
    }

    /// After the last event: frames on disk, the ledger's state final. A failed write is
    /// logged, not raised: the session is stopped either way, and its events are on record.
    pub(super) async fn close_ledger(&self) {
        self.ledger.shots.flush().await;
        let failed = self.failed();
        let closed = self.ledger.update_meta(|m| {
            m.state = if failed { "failed" } else { "stopped" }.into();
            m.ended_at = Some(crate::ledger::now());
        });
        if let Err(e) = closed {
            tracing::error!(error = %e, session = %self.info.session_id, "could not record the session's end in its review ledger");
        }
    }
}

impl SessionManager {
    pub async fn stop(&self, id: &str) -> Result<(), SessionError> {
        let started = Instant::now();
        let session = self
            .session_for("session_stop", id, &json!({}), started)
            .await?;
        self.sessions.write().await.remove(id);
        let removed = session.end().await.map_err(SessionError::Io);
        let ok = json!({ "ok": true });
        let recorded = append_call(
            &session.ledger,
            "session_stopped",
            "session_stop",
            json!({}),
            removed.as_ref().map(|()| &ok),
            started,
            &Default::default(),
        );
        // Logged, not raised: the VM is gone whatever the ledger says, and an error would tell
        // the agent its session still runs.
        if let Err(e) = recorded {
            tracing::error!(error = %e, session = %id, "could not record a session stop in the review ledger");
        }
        session.close_ledger().await;
        tracing::info!(session = %id, "session stopped");
        removed
    }
}
