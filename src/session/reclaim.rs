//! The manager's side of `reclaim`: the tool call, checked and recorded like every other.

use std::time::Instant;

use serde_json::json;

use super::{SessionError, SessionManager};
use crate::reclaim::parse_older_than;
use crate::storage::reclaim::{Kind, Report, Request};

impl SessionManager {
    /// Reports (or with `apply` removes) what deskvm holds that nothing needs. This server's
    /// own sessions are live, so never candidates.
    pub async fn reclaim(
        &self,
        apply: bool,
        kinds: Option<Vec<Kind>>,
        include: Vec<String>,
        older_than: Option<String>,
    ) -> Result<Report, SessionError> {
        let started = Instant::now();
        let mode = if apply { "apply" } else { "report" };
        let args =
            json!({ "mode": mode, "kinds": kinds, "include": include, "older_than": older_than });
        let result = async {
            let req = Request {
                apply,
                kinds,
                exports: include,
                older_than: older_than.as_deref().map(parse_older_than).transpose()?,
            };
            crate::reclaim::run(self.layout(), &req).await
        }
        .await;
        // The ledger keeps what was removed or failed; a report's candidates only as counts.
        let summary = result.as_ref().map(|r| {
            json!({
                "mode": r.mode,
                "candidates": r.candidates.len(),
                "candidate_bytes": r.candidate_bytes,
                "removed": r.removed,
                "failed": r.failed,
                "bytes_freed": r.bytes_freed,
                "took_ms": r.took_ms,
            })
        });
        self.record_server("reclaim", args, summary.as_ref().map_err(|e| *e), started);
        result
    }
}
