//! Whether a session's VM is still there: the exit watch its backend fills in (QEMU exited,
//! its container did, its engine went away) and what calls do with it.

use std::sync::Arc;

use serde_json::json;
use tokio::sync::watch;

use super::{boot, Session, SessionError};
use crate::ledger::Ledger;

/// Records a VM's exit when it happens, not only when the next call trips over it (a VM
/// stopped on purpose, by session_stop or a restore, is not a failure).
pub(super) fn watch_exit(id: &str, exited: watch::Receiver<Option<String>>, ledger: Arc<Ledger>) {
    let id = id.to_string();
    tokio::spawn(async move {
        if let Some(reason) = boot::exit_reason(exited).await.filter(|r| r != "stopped") {
            tracing::warn!(session = %id, %reason, "session failed: its VM exited");
            // Logged, not raised: nobody waits on this task, and the VM is gone either way
            // (the next call says so).
            if let Err(e) = ledger.append("session_failed", json!({ "reason": reason })) {
                tracing::error!(error = %e, session = %id, "could not record a session failure in the review ledger");
            }
            if let Err(e) = ledger.update_meta(|m| m.state = "failed".into()) {
                tracing::error!(error = %e, session = %id, "could not mark the review as failed");
            }
        }
    });
}

impl Session {
    pub(super) fn exited(&self) -> watch::Receiver<Option<String>> {
        self.exited.lock().expect("exit watch poisoned").clone()
    }

    /// Its VM died (not stopped on purpose, by session_stop or a restore).
    pub fn failed(&self) -> bool {
        self.exited()
            .borrow()
            .as_deref()
            .is_some_and(|r| r != "stopped")
    }

    /// `Ok` while its VM runs, else the error that says how it ended.
    pub fn check_alive(&self) -> Result<(), SessionError> {
        match self.exited().borrow().clone() {
            Some(reason) => Err(self.gone(reason)),
            None => Ok(()),
        }
    }

    fn gone(&self, reason: String) -> SessionError {
        SessionError::Failed {
            id: self.info.session_id.clone(),
            reason,
        }
    }

    /// Runs `work` unless the VM goes first. A VM on an engine that went silent answers nothing
    /// and resets no connection: without this, its calls would wait on it for good once the
    /// engine's watchdog has failed the session. Dropping `work` midway is safe: QMP and
    /// guest-agent exchanges finish in tasks of their own (`vm::qmp::finish_alone`).
    pub(super) async fn unless_exited<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, SessionError>>,
    ) -> Result<T, SessionError> {
        let mut exited = self.exited();
        let gone = async {
            // The watch's read guard must not live across the await below (it is not Send).
            let reason = exited.wait_for(Option::is_some).await.map(|r| r.clone());
            match reason {
                Ok(reason) => reason.unwrap_or_default(),
                // No backend can report an exit any more: only `work` can end this.
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            r = work => r,
            reason = gone => Err(self.gone(reason)),
        }
    }
}
