//! The MCP tasks extension (SEP-2663, rmcp's `task_manager`): for a client that declares it,
//! calls that may run long answer at once with a task the client polls — an `exec` given more
//! than the default 30 s, and a `session_start` that must cold-boot (no ready state for that
//! machine). Cancelling the task stops the wait the same way a cancelled request does.

use rmcp::model::{CallToolRequestParams, CallToolResponse, CreateTaskResult};
use rmcp::service::RequestContext;
use rmcp::task_manager::{TaskExit, TaskOptions};
use rmcp::{ErrorData as McpError, RoleServer};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::DeskvmServer;
use crate::session::Caller;

/// An exec with a longer timeout than this runs as a task.
pub const LONG_EXEC_MS: u64 = 30_000;

pub fn runs_as_task(
    server: &DeskvmServer,
    request: &CallToolRequestParams,
    context: &RequestContext<RoleServer>,
) -> bool {
    if !context
        .client_capabilities()
        .is_some_and(|c| c.supports_tasks())
    {
        return false;
    }
    let arg = |k: &str| request.arguments.as_ref().and_then(|a| a.get(k));
    match request.name.as_ref() {
        "exec" => arg("timeout_ms")
            .and_then(Value::as_u64)
            .is_some_and(|t| t > LONG_EXEC_MS),
        "session_start" => server.manager.would_cold_boot(
            arg("image").and_then(Value::as_str),
            arg("memory_mb").and_then(Value::as_u64).map(|m| m as u32),
            arg("network").and_then(Value::as_bool).unwrap_or(false),
        ),
        _ => false,
    }
}

/// Starts the call as a task; the call is recorded in the ledger as any other.
pub fn spawn(
    server: DeskvmServer,
    request: CallToolRequestParams,
    context: RequestContext<RoleServer>,
    caller: Caller,
) -> CallToolResponse {
    let tool = request.name.to_string();
    let tasks = server.tasks.clone();
    let options = TaskOptions::new()
        .with_poll_interval_ms(500)
        .with_status_message(format!("{tool} running"));
    let task = tasks.spawn(options, move |ctx| {
        Box::pin(async move {
            // The request's own token ends with this reply: the task gets one of its own.
            let cancel = CancellationToken::new();
            let run = caller
                .with_cancel(cancel.clone())
                .scope(server.run_tool(request, context));
            tokio::pin!(run);
            let result = loop {
                tokio::select! {
                    r = &mut run => break r,
                    _ = ctx.cancelled(), if !cancel.is_cancelled() => cancel.cancel(),
                }
            };
            match result {
                _ if cancel.is_cancelled() => Err(TaskExit::Cancelled),
                Ok(CallToolResponse::Complete(r)) => Ok(r),
                Ok(_) => Err(TaskExit::Error(McpError::internal_error(
                    "a tool answered with a task inside a task",
                    None,
                ))),
                Err(e) => Err(TaskExit::Error(e)),
            }
        })
    });
    CallToolResponse::Task(CreateTaskResult::new(task))
}
