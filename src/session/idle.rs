//! Sessions nobody talks to: the idle timeout stops them (recorded as an idle stop; their next
//! call says so), and shutdown stops them all.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::{Caller, SessionManager};

impl SessionManager {
    /// Stops sessions that had no tool call for the idle timeout, now and then, for as long as
    /// the manager lives. A call in flight (however long) keeps its session.
    pub fn spawn_idle_janitor(self: &Arc<Self>) {
        let Some(timeout) = self.cfg.idle_timeout else {
            return;
        };
        let manager = Arc::downgrade(self);
        let tick = (timeout / 4).clamp(Duration::from_millis(250), Duration::from_secs(30));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(tick).await;
                let Some(m) = manager.upgrade() else { break };
                let idle: Vec<(String, Duration)> = m
                    .sessions
                    .read()
                    .await
                    .iter()
                    .filter_map(|(id, s)| {
                        let since = s.last_call.lock().expect("clock poisoned").elapsed();
                        let busy = s.lane.try_lock().is_err();
                        (since >= timeout && !busy).then(|| (id.clone(), since))
                    })
                    .collect();
                for (id, since) in idle {
                    m.stop_idle(&id, since).await;
                }
            }
        });
    }

    async fn stop_idle(&self, id: &str, since: Duration) {
        let Some(session) = self.sessions.write().await.remove(id) else {
            return;
        };
        let idle_s = since.as_secs();
        self.stopped_idle
            .lock()
            .expect("idle list poisoned")
            .insert(id.to_string(), (idle_s, session.info.token.clone()));
        let removed = session.end().await;
        let fields = json!({
            "reason": "idle",
            "idle_s": idle_s,
            "timeout_s": self.cfg.idle_timeout.unwrap_or_default().as_secs(),
            "error": removed.as_ref().err().map(|e| json!({ "error": "io", "message": e.to_string() })),
        });
        if let Err(e) = session.ledger.append("session_stopped", fields) {
            tracing::error!(error = %e, session = %id, "could not record an idle stop");
        }
        session.close_ledger().await;
        tracing::info!(session = %id, idle_s, "session stopped: idle");
    }

    pub async fn shutdown(&self) {
        // First, so no start finishing meanwhile prepares another VM.
        self.warm.store(false, std::sync::atomic::Ordering::SeqCst);
        let ids: Vec<String> = self.sessions.read().await.keys().cloned().collect();
        for id in ids {
            let _ = Caller::system().scope(self.stop(&id)).await;
        }
        for backend in self.backends() {
            backend.discard_prepared().await;
        }
    }
}
