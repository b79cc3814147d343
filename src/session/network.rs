//! A session's way out and in: its network mode (`none`, `open`, `allow`), the host services
//! forwarded into it, and the wiring that makes them real — the unix sockets QEMU hands guest
//! connections to, the proxy and relays behind them, and the guest's own configuration.
//!
//! The policy lives on the host: in `none` and `allow` QEMU runs its user-mode network with
//! `restrict=on`, which drops every guest packet except connections to the forward addresses
//! below; those reach deskvm, which relays a forward to its loopback service or runs the
//! request through the allowlist proxy. Nothing the guest does changes either.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{json, Value};

use super::error::SessionError;
use crate::egress::policy::Policy;
use crate::egress::{Decision, Sink};
use crate::ledger::Ledger;
use crate::vm::spec::{GuestFwd, RuntimeFiles};

mod guest;
pub(super) use guest::{configure_guest, no_agent};

/// Where forwarded host services appear in the guest (`host.deskvm.internal`).
pub const FORWARD_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);
pub const FORWARD_NAME: &str = "host.deskvm.internal";
/// The allowlist proxy (`proxy.deskvm.internal:3128`).
pub const PROXY_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 101);
pub const PROXY_NAME: &str = "proxy.deskvm.internal";
pub const PROXY_PORT: u16 = 3128;
/// At most this many forwards per session.
const MAX_FORWARDS: usize = 16;

/// What a session may reach.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NetworkMode {
    /// Nothing (forwards still work: they are not egress).
    #[default]
    None,
    /// QEMU's NAT with no policy.
    Open,
    /// Only what the entries allow, through deskvm's proxy.
    Allow(Vec<String>),
}

impl NetworkMode {
    pub fn name(&self) -> &'static str {
        match self {
            NetworkMode::None => "none",
            NetworkMode::Open => "open",
            NetworkMode::Allow(_) => "allow",
        }
    }
}

/// The operator's rules for every session (`deskvm serve` flags).
#[derive(Debug, Clone, Default)]
pub struct NetConfig {
    /// Host ports a session may forward (`--allow-forward`; empty: none).
    pub allow_forward: PortSet,
    /// A token's own forward ports, within `allow_forward` (token file `forward=`).
    pub token_forward: HashMap<String, PortSet>,
    /// The proxy's name map (`--resolve NAME=IP`), consulted before DNS.
    pub resolve: HashMap<String, IpAddr>,
    /// The review keeps copies of the files that went in and out (`--review-files`).
    pub review_files: bool,
    /// The modes sessions may ask for (`--network-modes`; empty: all).
    pub modes: Vec<String>,
}

/// Ports as an operator writes them: `3000,8000-8100`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortSet(Vec<(u16, u16)>);

impl PortSet {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut ranges = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            let port = |p: &str| {
                p.trim()
                    .parse::<u16>()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| {
                        format!("{part:?} is not a port (1-65535) or a range like 8000-8100")
                    })
            };
            let (lo, hi) = (port(a)?, port(b)?);
            if lo > hi {
                return Err(format!("{part:?}: the range runs backwards"));
            }
            ranges.push((lo, hi));
        }
        Ok(PortSet(ranges))
    }

    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|&(lo, hi)| (lo..=hi).contains(&port))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Display for PortSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|&(lo, hi)| {
                if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo}-{hi}")
                }
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// A session's network, checked: the mode's policy parsed, each forward a loopback service
/// whose port the operator (and the caller's token) allows.
#[derive(Debug, Clone, Default)]
pub struct NetRequest {
    pub mode: NetworkMode,
    pub forwards: Vec<SocketAddr>,
}

impl NetRequest {
    /// Checks `mode` and `forward` against `cfg` for the caller's token, before anything runs.
    pub fn check(
        mode: NetworkMode,
        forward: &[String],
        cfg: &NetConfig,
        token: Option<&str>,
    ) -> Result<Self, SessionError> {
        if !cfg.modes.is_empty() && !cfg.modes.iter().any(|m| m == mode.name()) {
            return Err(SessionError::Unavailable {
                what: "this network mode",
                why: format!(
                    "network {:?} is not offered by this server; it offers: {} (deskvm serve --network-modes)",
                    mode.name(),
                    cfg.modes.join(", ")
                ),
            });
        }
        if let NetworkMode::Allow(entries) = &mode {
            Policy::parse(entries)
                .map_err(|e| SessionError::InvalidParams(format!("network.allow: {e}")))?;
        }
        if forward.len() > MAX_FORWARDS {
            return Err(SessionError::ForwardRefused {
                entry: format!("{} entries", forward.len()),
                why: format!("at most {MAX_FORWARDS} forwards per session"),
            });
        }
        let allowed = match token.and_then(|t| cfg.token_forward.get(t)) {
            Some(own) => own,
            None => &cfg.allow_forward,
        };
        let mut forwards: Vec<SocketAddr> = Vec::new();
        for entry in forward {
            let addr = parse_forward(entry)?;
            let in_token = token.is_none_or(|t| !cfg.token_forward.contains_key(t))
                || allowed.contains(addr.port());
            if !cfg.allow_forward.contains(addr.port()) || !in_token {
                let whose = if token.is_some_and(|t| cfg.token_forward.contains_key(t)) {
                    format!(
                        "this token's ports: {allowed}; the server's: {}",
                        cfg.allow_forward
                    )
                } else {
                    format!(
                        "the server's allowed ports (deskvm serve --allow-forward): {}",
                        cfg.allow_forward
                    )
                };
                return Err(SessionError::ForwardRefused {
                    entry: entry.clone(),
                    why: format!("port {} is not allowed; {whose}", addr.port()),
                });
            }
            if forwards.iter().any(|f| f.port() == addr.port()) {
                return Err(SessionError::ForwardRefused {
                    entry: entry.clone(),
                    why: "port forwarded twice (the guest sees each at host.deskvm.internal:PORT)"
                        .into(),
                });
            }
            forwards.push(addr);
        }
        Ok(NetRequest { mode, forwards })
    }

    /// Whether the guest needs configuring (an address, names, the proxy).
    pub fn needs_guest(&self) -> bool {
        self.mode != NetworkMode::None || !self.forwards.is_empty()
    }

    /// What the start's reply says about the network.
    pub fn describe(&self) -> Value {
        let forwards: Vec<Value> = self
            .forwards
            .iter()
            .map(|a| json!({ "host": a.to_string(), "guest": format!("{FORWARD_NAME}:{}", a.port()) }))
            .collect();
        let mut v = json!({ "mode": self.mode.name(), "forwards": forwards });
        if let NetworkMode::Allow(entries) = &self.mode {
            v["allow"] = json!(entries);
            v["proxy"] = json!(format!("http://{PROXY_NAME}:{PROXY_PORT}"));
        }
        v
    }
}

/// `127.0.0.1:3000`, `localhost:3000`, `[::1]:3000` or `3000`: a loopback TCP service.
fn parse_forward(entry: &str) -> Result<SocketAddr, SessionError> {
    let refuse = |why: &str| SessionError::ForwardRefused {
        entry: entry.to_string(),
        why: why.to_string(),
    };
    let e = entry.trim();
    let (host, port) = match e.rsplit_once(':') {
        Some((h, p)) => (h.trim_matches(['[', ']']), p),
        None => ("127.0.0.1", e),
    };
    let port: u16 = port.parse().ok().filter(|&p| p > 0).ok_or_else(|| {
        refuse("the port must be 1-65535 (forms: 127.0.0.1:PORT, localhost:PORT, [::1]:PORT, PORT)")
    })?;
    let ip: IpAddr = match host {
        "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
        h => h.parse().map_err(|_| {
            refuse("only loopback addresses can be forwarded (127.0.0.1, localhost, ::1)")
        })?,
    };
    if !ip.is_loopback() {
        return Err(refuse(
            "only loopback addresses can be forwarded (127.0.0.1, localhost, ::1): a forward is the host's own service, not a way out",
        ));
    }
    Ok(SocketAddr::new(ip, port))
}

/// Where a session's network decisions go: its ledger once it has one (decisions made before
/// are kept until then).
#[derive(Default)]
pub struct DecisionLog {
    ledger: OnceLock<Arc<Ledger>>,
    early: Mutex<Vec<Decision>>,
}

impl DecisionLog {
    fn record(&self, d: Decision) {
        match self.ledger.get() {
            Some(l) => append(l, &d),
            None => self.early.lock().expect("decision log poisoned").push(d),
        }
    }

    /// From now on decisions go to `ledger`; the early ones go there first.
    pub fn attach(&self, ledger: Arc<Ledger>) {
        let early = std::mem::take(&mut *self.early.lock().expect("decision log poisoned"));
        for d in &early {
            append(&ledger, d);
        }
        let _ = self.ledger.set(ledger);
    }
}

fn append(ledger: &Ledger, d: &Decision) {
    let fields = serde_json::to_value(d).unwrap_or_default();
    if let Err(e) = ledger.append("network", fields) {
        tracing::warn!(error = %e, "could not record a network decision");
    }
}

/// The running side of a session's network: the listeners QEMU's `guestfwd` connects to, and
/// where their decisions go. Dropping it stops them.
pub struct Wiring {
    pub guestfwd: Vec<GuestFwd>,
    pub log: Arc<DecisionLog>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Wiring {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Wiring {
    /// Stops the listeners and their open connections, each connection's decision recorded.
    pub async fn stop(mut self) {
        for t in std::mem::take(&mut self.tasks) {
            t.abort();
            let _ = t.await;
        }
    }

    /// Listens on the session's unix sockets (`files` as this host sees them; `qemu_files` as
    /// QEMU does) for each forward and, in allow mode, the proxy.
    pub fn start(
        req: &NetRequest,
        cfg: &NetConfig,
        files: &RuntimeFiles,
        qemu_files: &RuntimeFiles,
    ) -> Result<Self, SessionError> {
        // QEMU splits `cmd:` like a shell and socat splits its address on these: a runtime
        // dir with one would break every forward without a word.
        let dir = qemu_files.dir.to_string_lossy();
        if let Some(c) = dir
            .chars()
            .find(|c| ",:!'\"\\ ()[]{}".contains(*c) || c.is_whitespace())
        {
            return Err(SessionError::Setup(format!(
                "the runtime dir {dir} has {c:?} in its path, which the forward's socat cannot take; set DESKVM_RUNTIME_DIR to a plain path"
            )));
        }
        let log = Arc::new(DecisionLog::default());
        let sink: Sink = {
            let log = log.clone();
            Arc::new(move |d: Decision| log.record(d))
        };
        let mut w = Wiring {
            guestfwd: Vec::new(),
            log,
            tasks: Vec::new(),
        };
        for target in &req.forwards {
            let name = format!("net-fwd-{}.sock", target.port());
            let listener = listen(&files.dir.join(&name))?;
            w.tasks
                .push(tokio::spawn(crate::egress::relay::serve_forward(
                    listener,
                    *target,
                    sink.clone(),
                )));
            w.guestfwd.push(GuestFwd {
                addr: FORWARD_ADDR,
                port: target.port(),
                socket: qemu_files.dir.join(name),
            });
        }
        if let NetworkMode::Allow(entries) = &req.mode {
            let policy = Policy::parse(entries)
                .map_err(|e| SessionError::InvalidParams(format!("network.allow: {e}")))?;
            let proxy = Arc::new(crate::egress::proxy::ProxyConfig {
                policy,
                resolve: cfg.resolve.clone(),
                connect_timeout: std::time::Duration::from_secs(10),
            });
            let listener = listen(&files.dir.join("net-proxy.sock"))?;
            w.tasks.push(tokio::spawn(crate::egress::proxy::serve(
                listener,
                proxy,
                sink.clone(),
            )));
            w.guestfwd.push(GuestFwd {
                addr: PROXY_ADDR,
                port: PROXY_PORT,
                socket: qemu_files.dir.join("net-proxy.sock"),
            });
        }
        Ok(w)
    }
}

fn listen(path: &std::path::Path) -> Result<tokio::net::UnixListener, SessionError> {
    let _ = std::fs::remove_file(path);
    tokio::net::UnixListener::bind(path)
        .map_err(|e| SessionError::Io(crate::storage::IoError::new("listening on", path, e)))
}

#[cfg(test)]
mod tests;
