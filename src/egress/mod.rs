//! What a session's guest may reach on the network, enforced on the host side.
//!
//! In mode `none` and `allow` QEMU runs user-mode networking with `restrict=on`: the guest
//! reaches nothing but the addresses QEMU hands to the host as unix-socket connections
//! (`guestfwd`). This room serves those connections:
//!
//! - [`policy`]: the allowlist of mode `allow` (`{"allow": [ENTRY...]}`), parsed once at session
//!   start and asked per connection.
//! - [`proxy`]: the HTTP forward proxy at `proxy.deskvm.internal:3128` that enforces it: plain
//!   HTTP requests and `CONNECT` tunnels, with the TLS server name of a tunnel checked too, so a
//!   tunnel to an allowed name cannot carry a request for another site.
//! - [`relay`]: the forwards of host loopback services to `host.deskvm.internal:PORT`.
//!
//! Every connection ends in exactly one [`Decision`] handed to a [`Sink`]; the session writes
//! them to the review ledger as events of kind `network`. The room knows nothing of sessions or
//! ledgers: it sits low (floor 2) and is given listeners, a policy and a sink.

pub mod policy;
pub mod proxy;
pub mod relay;

mod gate;
mod head;
mod pipe;
mod tls;

/// What happened to one guest connection, as the ledger's `network` event carries it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Decision {
    /// `"allowed"` or `"denied"`.
    pub decision: &'static str,
    /// `"http"` (a plain request), `"connect"` (a tunnel) or `"forward"` (a host service).
    pub via: &'static str,
    /// The target as the guest named it (lowercase; an IPv6 address without brackets); empty
    /// when the request was too malformed to name one.
    pub host: String,
    pub port: u16,
    /// The TLS server name a tunnel's ClientHello asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// Why it was denied, or why an allowed connection still failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Bytes sent towards the target and back to the guest.
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// From the request head read (the connection accepted, for a forward) to the end.
    pub ms: u64,
}

/// Where decisions go. Called once per connection, from the connection's task (or from its
/// drop when the session ends first): it must not block.
pub type Sink = std::sync::Arc<dyn Fn(Decision) + Send + Sync>;
