//! What every tool call carries besides its arguments: who makes it (from the HTTP request
//! rmcp hands over), and progress notifications while it runs when the client asked for them.

use std::time::{Duration, Instant};

use base64::Engine;
use rmcp::handler::server::tool::ToolCallContext;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock,
    ProgressNotificationParam,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer};
use serde_json::{json, Value};

use super::tools::{structured, tool_error};
use super::DeskvmServer;
use crate::session::{chain, Action, Caller, Outcome};

/// The name of the token a request came with, which the HTTP front door (`crate::http`) puts in
/// the request's extensions after checking it: sessions belong to it. This room only reads it.
#[derive(Debug, Clone)]
pub struct Principal(pub String);

/// Which connection a call came over, for calls that do not carry an `Mcp-Session-Id` (the
/// legacy SSE transport sets it per stream).
#[derive(Debug, Clone)]
pub struct Connection(pub String);

/// All text content of a result, joined: how a tool error reads as one message.
pub fn text_of(r: &CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The caller of a tool call: its token's name and its connection (stdio when the call did not
/// come over HTTP).
pub fn caller(context: &RequestContext<RoleServer>) -> Caller {
    let Some(parts) = context.extensions.get::<http::request::Parts>() else {
        return Caller::new(None, "stdio").with_cancel(context.ct.clone());
    };
    let principal = parts.extensions.get::<Principal>().map(|p| p.0.clone());
    let connection = match parts.extensions.get::<Connection>() {
        Some(c) => c.0.clone(),
        None => match parts
            .headers
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
        {
            Some(id) => format!("http:{}", &id[..id.len().min(8)]),
            None => "http".into(),
        },
    };
    let host = parts
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string);
    Caller::new(principal, connection)
        .with_cancel(context.ct.clone())
        .with_host(host)
}

/// While alive, sends a progress notification every second (elapsed seconds, with the tool's
/// name) if the client gave a progress token. Long calls (a cold-booting session_start, wait,
/// exec) thus show they are alive; short ones end before the first.
pub struct Progress(Option<tokio::task::JoinHandle<()>>);

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            t.abort();
        }
    }
}

pub fn progress(tool: &str, context: &RequestContext<RoleServer>) -> Progress {
    let Some(token) = context.meta.get_progress_token() else {
        return Progress(None);
    };
    let peer = context.peer.clone();
    let tool = tool.to_string();
    let started = Instant::now();
    Progress(Some(tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let s = started.elapsed().as_secs_f64().floor();
            let note = ProgressNotificationParam::new(token.clone(), s)
                .with_message(format!("{tool}: running for {s} s"));
            if peer.notify_progress(note).await.is_err() {
                break;
            }
        }
    })))
}

impl DeskvmServer {
    /// Runs a tool through the router. Handlers record their own calls through the session
    /// manager; a call the router refuses before any handler runs (arguments that do not
    /// parse, an unknown tool) is recorded here, so no call escapes the ledger.
    pub(super) async fn run_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let tool = request.name.to_string();
        let args = request
            .arguments
            .clone()
            .map(Value::Object)
            .unwrap_or_else(|| json!({}));
        let started = std::time::Instant::now();
        let tcc = ToolCallContext::new(self, request, context);
        let mut result = self.tool_router.call(tcc).await;
        // Arguments that do not parse come back from the router as a bare tool error (no
        // handler ran); an unknown tool as a protocol error. Both are recorded here, and the
        // former gets the structured shape every other tool error has.
        let refused = match &mut result {
            Err(e) => Some(e.message.to_string()),
            Ok(CallToolResponse::Complete(r))
                if r.is_error == Some(true) && r.structured_content.is_none() =>
            {
                let message = text_of(r);
                r.structured_content =
                    Some(json!({ "error": "invalid_params", "message": message }));
                Some(message)
            }
            Ok(_) => None,
        };
        if let Some(message) = refused {
            self.manager
                .record_refused_call(&tool, &args, &message)
                .await;
        }
        tracing::debug!(
            tool,
            ms = started.elapsed().as_millis() as u64,
            ok = result.is_ok(),
            "tool call"
        );
        result
    }

    pub(super) async fn act(&self, session_id: &str, action: Action) -> CallToolResult {
        let name = action.name();
        // An error about a secret may quote it: the log gets its kind only.
        let secret = action.is_secret();
        let started = std::time::Instant::now();
        let result = self.manager.act(session_id, action).await;
        let ms = started.elapsed().as_millis() as u64;
        match result {
            Ok(outcome) => {
                tracing::debug!(session = session_id, action = name, ms, "ok");
                render(outcome, ms)
            }
            Err(e) => {
                let error = if secret {
                    e.kind().to_string()
                } else {
                    chain(&e)
                };
                tracing::info!(session = session_id, action = name, ms, %error, "action failed");
                tool_error(e)
            }
        }
    }
}

pub(super) fn render(outcome: Outcome, ms: u64) -> CallToolResult {
    let mut meta = outcome.to_json();
    if let (false, Value::Object(m)) = (
        matches!(outcome, Outcome::Exec(_) | Outcome::Waited { .. }),
        &mut meta,
    ) {
        m.insert("ms".into(), ms.into());
    }
    match outcome.png() {
        Some(png) => {
            let mut r = CallToolResult::success(vec![
                ContentBlock::image(
                    base64::engine::general_purpose::STANDARD.encode(png),
                    "image/png",
                ),
                ContentBlock::text(meta.to_string()),
            ]);
            r.structured_content = Some(meta);
            r
        }
        None => structured(meta),
    }
}
