//! The `reclaim` tool: a router of its own beside the session tools, merged into one.

use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock};
use rmcp::{tool, tool_router, ErrorData as McpError};

use super::params::{ReclaimArgs, ReclaimMode};
use super::tools::{tool_error, DeskvmServer};

#[tool_router(router = reclaim_router, vis = "pub(crate)")]
impl DeskvmServer {
    #[tool(
        description = "What deskvm holds on disk and in Docker that nothing needs any more: runtime dirs, QEMU processes and containers of deskvm servers that are gone, half-built images, guest images and ready states superseded by a newer recipe or QEMU build, old runtime images, ledgers of stopped sessions past retention, and exports named in include. mode=report (default) lists each with its path or id, kind, bytes and why; mode=apply removes them and reports per item what was removed, bytes freed, and each failure with its error. Never touches a live session, anything in use, or anything deskvm did not create.",
        annotations(
            title = "Reclaim storage",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn reclaim(
        &self,
        Parameters(a): Parameters<ReclaimArgs>,
    ) -> Result<CallToolResult, McpError> {
        let apply = a.mode == ReclaimMode::Apply;
        let result = self
            .manager
            .reclaim(apply, a.kinds, a.include, a.older_than)
            .await;
        Ok(match result {
            Ok(r) => {
                let text = match (&r.removed, &r.failed) {
                    (Some(removed), Some(failed)) => {
                        let errors: Vec<&str> = failed.iter().map(|f| f.error.as_str()).collect();
                        format!(
                            "reclaim apply: removed {} item(s), {} bytes freed; {} failed{}",
                            removed.len(),
                            r.bytes_freed.unwrap_or(0),
                            failed.len(),
                            if errors.is_empty() {
                                String::new()
                            } else {
                                format!(": {}", errors.join("; "))
                            }
                        )
                    }
                    _ => format!(
                        "reclaim report: {} candidate(s), {} bytes; nothing removed",
                        r.candidates.len(),
                        r.candidate_bytes
                    ),
                };
                let mut out = CallToolResult::success(vec![ContentBlock::text(text)]);
                out.structured_content = Some(serde_json::to_value(&r).unwrap_or_default());
                out
            }
            Err(e) => tool_error(e),
        })
    }
}
