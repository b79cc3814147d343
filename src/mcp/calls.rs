//! What every tool call carries besides its arguments: who makes it (from the HTTP request
//! rmcp hands over), and progress notifications while it runs when the client asked for them.

use std::time::{Duration, Instant};

use rmcp::model::ProgressNotificationParam;
use rmcp::service::RequestContext;
use rmcp::RoleServer;

use super::http::auth::Principal;
use super::http::Connection;
use crate::session::Caller;

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
    Caller::new(principal, connection).with_cancel(context.ct.clone())
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
