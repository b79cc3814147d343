//! Who makes a call: the token it came with (its principal) and the connection. The transport
//! sets it around each tool call (a task-local, so no handler signature has to carry it); the
//! manager shows a principal only its own sessions.

use std::future::Future;

tokio::task_local! {
    static CALLER: Caller;
}

#[derive(Debug, Clone)]
pub struct Caller {
    /// The name of the token the call came with; `None` over stdio or an HTTP server without
    /// tokens.
    pub principal: Option<String>,
    /// Which connection: "stdio", "http:<Mcp-Session-Id>", "sse:<session>".
    pub connection: String,
    /// The server itself (shutdown, idle stops): sees every session.
    pub system: bool,
    /// Fires when the client cancels the call (or its connection ends): long waits stop.
    pub cancel: Option<tokio_util::sync::CancellationToken>,
    /// The `Host` an HTTP call was sent to: links back to this server use it when it listens on
    /// every interface.
    pub host: Option<String>,
}

impl Caller {
    pub fn new(principal: Option<String>, connection: impl Into<String>) -> Self {
        Caller {
            principal,
            connection: connection.into(),
            system: false,
            cancel: None,
            host: None,
        }
    }

    pub fn with_host(mut self, host: Option<String>) -> Self {
        self.host = host;
        self
    }

    pub fn with_cancel(mut self, ct: tokio_util::sync::CancellationToken) -> Self {
        self.cancel = Some(ct);
        self
    }

    pub fn system() -> Self {
        Caller {
            principal: None,
            connection: "server".into(),
            system: true,
            cancel: None,
            host: None,
        }
    }

    /// The caller of the tool call being handled (stdio when no transport set one).
    pub fn current() -> Self {
        CALLER
            .try_with(Caller::clone)
            .unwrap_or_else(|_| Caller::new(None, "stdio"))
    }

    pub async fn scope<F: Future>(self, f: F) -> F::Output {
        CALLER.scope(self, f).await
    }

    /// Whether this caller may see a session started with `principal`.
    pub fn sees(&self, principal: &Option<String>) -> bool {
        self.system || &self.principal == principal
    }

    /// Whether this caller may read the exported review bundle `name` in `exports` (a bundle of
    /// a session another token started is not there for it).
    pub fn sees_bundle(&self, exports: &std::path::Path, name: &str) -> bool {
        crate::ledger::export::bundle_owner(&exports.join(name)).is_some_and(|o| self.sees(&o))
    }
}
