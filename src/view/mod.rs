//! The live view: a person watches a session's screen in a browser, and with a control link
//! takes over its mouse and keyboard. deskvm serves noVNC (Debian's `novnc` package) and
//! bridges its WebSocket to the VNC server QEMU keeps on a unix socket in the session's runtime
//! dir, through the session's [`Link`](crate::vm::link::Link) (so a desktop on a remote engine
//! is reached through the Engine API like everything else: no TCP port on the VM, none
//! published).
//!
//! Access is by link: every `session_view` call issues its own random token, scoped to one
//! session and one mode, that expires and dies with the session. Over HTTP with bearer tokens
//! the view also sits behind the server's token (`http::auth`).
//!
//! The view sits on the floor above the session and depends on it, never the reverse: the
//! session keeps what it must know of its viewers ([`crate::session::viewers`]: how many, the
//! signal that ends them, a person's input as [`crate::session::human::Burst`]s), and this room
//! fills that in, reading the VNC protocol and serving the links.

pub mod bridge;
pub mod human;
mod offer;
pub mod page;
pub mod rfb;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime};

pub use crate::session::viewers::{Viewer, MAX_VIEWERS};
use crate::session::Session;

/// How long a view link works unless the call says otherwise, and the longest it may.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
pub const TTL_RANGE_S: (u64, u64) = (10, 7 * 24 * 3600);
/// Where Debian's `novnc` package puts the client (overridden by `DESKVM_NOVNC_DIR`).
pub const NOVNC_DIR: &str = "/usr/share/novnc";

/// The noVNC client's directory, if it is there.
pub fn novnc_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("DESKVM_NOVNC_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(NOVNC_DIR));
    dir.join("core/rfb.js").is_file().then_some(dir)
}

/// What one view link allows.
#[derive(Clone)]
pub struct Grant {
    pub session: Weak<Session>,
    pub session_id: String,
    pub control: bool,
    pub expires: Instant,
    pub expires_at: SystemTime,
    /// The bearer token's name the link was made with (HTTP with tokens): only it opens it.
    pub principal: Option<String>,
}

impl Grant {
    pub fn mode(&self) -> &'static str {
        if self.control {
            "control"
        } else {
            "view"
        }
    }
}

/// Why a link does not open: every one is a 403, whose page says which (someone guessing
/// tokens learns only that theirs is not valid).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("this view link is not valid")]
    Unknown,
    #[error("this view link has expired")]
    Expired,
    #[error("the session of this view link has ended (stopped, or its VM failed)")]
    Ended,
}

/// Every live link of the server, and where the view is served.
#[derive(Default)]
pub struct Views {
    /// By the SHA-256 of the token: a lookup by digest tells a timing observer nothing of it.
    grants: Mutex<HashMap<[u8; 32], Grant>>,
    /// `http://host:port` of the listener that serves `/view/`.
    base: OnceLock<String>,
}

impl Views {
    pub fn set_base(&self, base: String) {
        let _ = self.base.set(base);
    }

    pub fn base(&self) -> Option<&str> {
        self.base.get().map(String::as_str)
    }

    /// Where views are served, as a caller that reached this server at `host` (its `Host`
    /// header) should address it: a server listening on every interface has no one address.
    pub fn base_for(&self, host: Option<&str>) -> Option<String> {
        let base = self.base()?;
        let unspecified = base.contains("://0.0.0.0:") || base.contains("://[::]:");
        Some(match host {
            Some(h) if unspecified => format!("http://{h}"),
            _ => base.to_string(),
        })
    }

    /// A new link to `session` in one mode, and its token.
    pub fn issue(
        &self,
        session: &Arc<Session>,
        control: bool,
        ttl: Duration,
        principal: Option<String>,
    ) -> (String, Grant) {
        let token = new_token();
        let grant = Grant {
            session: Arc::downgrade(session),
            session_id: session.id().to_string(),
            control,
            expires: Instant::now() + ttl,
            expires_at: SystemTime::now() + ttl,
            principal,
        };
        let mut grants = self.grants.lock().expect("view grants poisoned");
        // Links that can no longer open are forgotten as new ones are made.
        grants.retain(|_, g| g.expires > Instant::now() && g.live().is_some());
        grants.insert(digest(&token), grant.clone());
        (token, grant)
    }

    /// The session and grant behind `token`, for a request made with `principal`.
    pub fn check(
        &self,
        token: &str,
        principal: Option<&str>,
    ) -> Result<(Arc<Session>, Grant), Denied> {
        let found = self
            .grants
            .lock()
            .expect("view grants poisoned")
            .get(&digest(token))
            .cloned();
        let grant = found.ok_or(Denied::Unknown)?;
        if grant.principal.as_deref() != principal {
            return Err(Denied::Unknown);
        }
        if grant.expires <= Instant::now() {
            return Err(Denied::Expired);
        }
        let session = grant.live().ok_or(Denied::Ended)?;
        Ok((session, grant))
    }
}

impl Grant {
    fn live(&self) -> Option<Arc<Session>> {
        self.session
            .upgrade()
            .filter(|s| !s.view().closed().is_cancelled() && !s.failed())
    }
}

fn digest(token: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// 256 random bits, URL-safe.
fn new_token() -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// A file of the noVNC client, by its path under the client's dir; never outside it.
pub fn novnc_file(dir: &Path, rel: &str) -> Option<PathBuf> {
    if rel.is_empty() || rel.split('/').any(|c| c.is_empty() || c.starts_with('.')) {
        return None;
    }
    let real = dir.join(rel).canonicalize().ok()?;
    real.starts_with(dir.canonicalize().ok()?).then_some(real)
}
