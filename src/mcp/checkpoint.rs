//! Checkpoint tools: save a running desktop, roll it back, list and delete saved ones (forks
//! are `session_start {from_checkpoint}`).

use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::CallToolResult;
use rmcp::{tool, tool_router, ErrorData as McpError};
use serde_json::json;

use super::params::{CheckpointArgs, CheckpointNameArgs, RestoreArgs};
use super::tools::{structured, tool_error, DeskvmServer};

#[tool_router(router = checkpoint_router, vis = "pub(crate)")]
impl DeskvmServer {
    #[tool(
        description = "Save the running session's whole machine (memory, devices, disk) under a name; the session keeps running. Returns the name, bytes on disk (of them layer_bytes: the disk written since the previous checkpoint) and how long the VM was paused. Roll back with restore; start many from it with session_start {from_checkpoint}. Checkpoints outlive the session and the server.",
        annotations(
            title = "Checkpoint",
            destructive_hint = false,
            idempotent_hint = false
        )
    )]
    async fn checkpoint(
        &self,
        Parameters(a): Parameters<CheckpointArgs>,
    ) -> Result<CallToolResult, McpError> {
        Ok(
            match self
                .manager
                .checkpoint(&a.session_id, a.name.as_deref())
                .await
            {
                Ok(info) => structured(serde_json::to_value(info).unwrap_or_default()),
                Err(e) => tool_error(e),
            },
        )
    }

    #[tool(
        description = "Roll a running session back to a checkpoint in place: same session id; the screen, files and memory are those of the checkpoint, and the guest clock is set right.",
        annotations(title = "Restore checkpoint", destructive_hint = true)
    )]
    async fn restore(
        &self,
        Parameters(a): Parameters<RestoreArgs>,
    ) -> Result<CallToolResult, McpError> {
        Ok(
            match self.manager.restore(&a.session_id, &a.checkpoint).await {
                Ok(v) => structured(v),
                Err(e) => tool_error(e),
            },
        )
    }

    #[tool(
        description = "List saved checkpoints: name, source session, created at, bytes (and of them the disk layer), the layers each depends on (its ready state and the checkpoints below it), machine size, QEMU build and backend.",
        annotations(title = "List checkpoints", read_only_hint = true)
    )]
    async fn checkpoint_list(&self) -> Result<CallToolResult, McpError> {
        let list = self.manager.checkpoint_list().await;
        Ok(structured(json!({ "checkpoints": list })))
    }

    #[tool(
        description = "Delete a checkpoint. Refused while a running session or another checkpoint depends on it.",
        annotations(title = "Delete checkpoint", destructive_hint = true)
    )]
    async fn checkpoint_delete(
        &self,
        Parameters(a): Parameters<CheckpointNameArgs>,
    ) -> Result<CallToolResult, McpError> {
        Ok(match self.manager.checkpoint_delete(&a.name).await {
            Ok(bytes) => structured(json!({ "ok": true, "name": a.name, "bytes_freed": bytes })),
            Err(e) => tool_error(e),
        })
    }
}
