//! Sessions: one VM each, one serialized command lane each, one review ledger each. Every tool
//! call becomes an [`Action`] on a session (checked into a [`Plan`] before it queues) and comes
//! back as an [`Outcome`] or a [`SessionError`]; every one of them, refused or failed included,
//! is written to a ledger (`ledgers`, `act`).
//!
//! The session sits below the view, the MCP tools and the HTTP front door, and imports none of
//! them: it depends on `backend`, `image`, `ledger`, `storage` and `vm` only. What it must know
//! of its live viewers (how many, a person's input) it owns in [`viewers`] and [`human`]; the
//! `view` room fills those in.

mod act;
pub mod action;
mod after;
mod alive;
pub mod boot;
pub mod caller;
pub mod checkpoint;
pub mod clipboard;
mod desktop;
pub mod error;
pub mod files;
mod first_boot;
mod geometry;
pub mod human;
mod idle;
mod lane;
mod ledgers;
pub mod network;
mod placement;
pub mod reclaim;
mod restore;
mod save;
mod start;
mod stop;
pub mod template;
pub mod viewers;

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::{watch, Mutex, RwLock};

use crate::backend::Backend;
use crate::guest_image::ready::ReadyState;
use crate::guest_image::GuestImage;
use crate::ledger::{Ledger, ReviewMeta};
use crate::storage::{self, Layout};
use crate::vm::spec::{Accel, RuntimeFiles, VmSpec};
pub use action::{Action, Outcome, Plan, Point};
use after::AfterFrame;
use alive::watch_exit;
pub use boot::Startup;
pub use caller::Caller;
pub use desktop::StartRequest;
pub use error::{chain, check_range, SessionError};
use lane::Lane;

pub use crate::vm::spec::{HEIGHT_RANGE, MEMORY_RANGE, WIDTH_RANGE};

/// How a session's guest RAM is held.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum MemoryMode {
    /// Mapped copy-on-write from the shared-memory template: pages the guest has not written
    /// are shared with every other session of that template.
    Shared,
    /// The QEMU process's own memory (no template for this machine, a cold boot, or an older
    /// checkpoint).
    #[default]
    Private,
}

#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct SessionInfo {
    pub session_id: String,
    pub width: u32,
    pub height: u32,
    pub image: String,
    pub memory_mb: u32,
    /// `{mode, forwards, allow?, proxy?}`: what the guest may reach and where the forwarded
    /// host services are in it.
    pub network: serde_json::Value,
    pub accelerator: Accel,
    pub backend: String,
    /// The engine of the server's pool it runs on (`--engine`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
    /// Why it went there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub placement: Option<String>,
    pub startup: Startup,
    /// `shared`: its RAM is mapped copy-on-write from the shared-memory template.
    pub memory: MemoryMode,
    pub startup_ms: u64,
    pub state: String,
    /// The connection that started the session ("stdio", "http:<id>", "sse:<id>").
    pub connection: String,
    /// The name of the token that started it (HTTP with tokens): only that token's calls see it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Bytes on disk (session_list): the runtime dir, mostly the disk overlay, and the ledger.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk: Option<storage::usage::SessionDisk>,
    /// Live viewers open now (session_list).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub viewers: Option<u32>,
}

pub struct Session {
    info: SessionInfo,
    lane: Mutex<Lane>,
    /// The VM's exit; replaced when a restore starts a new VM.
    exited: std::sync::Mutex<watch::Receiver<Option<String>>>,
    files: RuntimeFiles,
    /// The backend (engine) its VM runs on: checkpoints, restores and their QEMU build are its.
    backend: Arc<dyn Backend>,
    ledger: Arc<Ledger>,
    geometry: Arc<std::sync::Mutex<geometry::Geometry>>,
    /// The capture of the frame after the latest screen-changing action, while it runs.
    after: std::sync::Mutex<Option<AfterFrame>>,
    /// When the latest tool call on this session began or ended (the idle timeout's clock).
    last_call: std::sync::Mutex<Instant>,
    /// Its live viewers: the link to its VNC socket, how many, a person's input.
    viewers: Arc<viewers::Viewers>,
    /// Its network as asked for, and the listeners behind its forwards and proxy.
    net: network::NetRequest,
    /// The guest addresses its VM hands to this host (a restore's new VM needs the same).
    guestfwd: Vec<crate::vm::spec::GuestFwd>,
    wiring: std::sync::Mutex<Option<network::Wiring>>,
}

impl Session {
    pub fn id(&self) -> &str {
        &self.info.session_id
    }

    fn guestfwd(&self) -> Vec<crate::vm::spec::GuestFwd> {
        self.guestfwd.clone()
    }
}

pub struct ManagerConfig {
    pub layout: Layout,
    pub backend: Arc<dyn Backend>,
    pub accel: Accel,
    pub max_sessions: usize,
    /// Sessions with no tool call for this long are stopped (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// Start sessions from the shared-memory template when there is one.
    pub shared_memory: bool,
    /// Several Docker engines (`--engine`): sessions are placed over them; `backend` is the
    /// first that answered.
    pub engines: Option<Arc<crate::backend::pool::Engines>>,
    /// The image a session that names none gets (`--image`).
    pub image: String,
    /// The operator's network rules: forwardable ports, the proxy's name map.
    pub net: network::NetConfig,
}

pub struct SessionManager {
    cfg: ManagerConfig,
    sessions: RwLock<HashMap<String, Arc<Session>>>,
    starting: AtomicUsize,
    /// Calls that name no running session (unknown ids, failed starts, session_list, exports
    /// of stopped sessions); made on first use (`None` if it could not be).
    server_ledger: std::sync::OnceLock<Option<Arc<Ledger>>>,
    /// Sessions the idle timeout stopped, and after how long: their next call says so.
    stopped_idle: std::sync::Mutex<HashMap<String, (u64, Option<String>)>>,
    /// Keep a VM prepared for the next session where the backend gains from it ([`SessionManager::keep_warm`]).
    warm: std::sync::atomic::AtomicBool,
}

/// The machine a session of `image` runs: ready states are keyed by it.
/// `memory_mb` `None`: the image's default.
pub fn machine_spec(
    image: &GuestImage,
    accel: Accel,
    memory_mb: Option<u32>,
    network: bool,
) -> VmSpec {
    VmSpec {
        kernel: image.kernel(),
        initrd: image.initrd(),
        firmware: image.meta.firmware,
        disk_bus: image.meta.disk_bus,
        memory_mb: memory_mb.unwrap_or(image.meta.memory_mb),
        cpus: 2,
        // The screen the VGA's EDID offers (the guest picks it at boot); a session of another
        // size is set with xrandr once it runs.
        width: image.meta.width,
        height: image.meta.height,
        accel,
        network,
        guestfwd: Vec::new(),
        memory: crate::vm::spec::Memory::Private,
        incoming: None,
        paused: false,
        backing: None,
    }
}

/// 64 random bits: session ids name ledgers and are the only key to a desktop.
fn new_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Names a user may give a session's review or export: no path separators, no hidden files.
pub fn check_name(field: &'static str, name: &str) -> Result<(), SessionError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(SessionError::InvalidName {
            field,
            value: name.chars().take(80).collect(),
            why: "use 1 to 64 characters from A-Z a-z 0-9 . _ - not starting with a dot".into(),
        })
    }
}

impl SessionManager {
    pub fn new(cfg: ManagerConfig) -> Self {
        SessionManager {
            cfg,
            sessions: RwLock::new(HashMap::new()),
            starting: AtomicUsize::new(0),
            server_ledger: std::sync::OnceLock::new(),
            stopped_idle: std::sync::Mutex::new(HashMap::new()),
            warm: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The image a start that names none gets.
    pub fn default_image(&self) -> &str {
        &self.cfg.image
    }

    pub fn accel(&self) -> Accel {
        self.cfg.accel
    }

    pub fn backend(&self) -> &dyn Backend {
        self.cfg.backend.as_ref()
    }

    pub fn layout(&self) -> &Layout {
        &self.cfg.layout
    }

    pub fn machine_spec(
        &self,
        image: &GuestImage,
        memory_mb: Option<u32>,
        network: bool,
    ) -> VmSpec {
        machine_spec(image, self.cfg.accel, memory_mb, network)
    }

    /// Whether a start with these arguments would cold-boot (no ready state for its machine).
    pub fn would_cold_boot(
        &self,
        image: Option<&str>,
        memory_mb: Option<u32>,
        network: bool,
    ) -> bool {
        let Ok(image) = GuestImage::locate(&self.cfg.layout, image.unwrap_or(&self.cfg.image))
        else {
            return false;
        };
        let spec = self.machine_spec(&image, memory_mb, network);
        ReadyState::find(&image, self.cfg.backend.qemu_version(), &spec).is_none()
    }

    async fn get(&self, id: &str) -> Result<Arc<Session>, SessionError> {
        let caller = Caller::current();
        let sessions = self.sessions.read().await;
        let found = sessions.get(id).filter(|s| caller.sees(&s.info.token));
        found.cloned().ok_or_else(|| {
            let idle = self
                .stopped_idle
                .lock()
                .expect("idle list poisoned")
                .get(id)
                .filter(|(_, token)| caller.sees(token))
                .map(|(s, _)| *s);
            if let Some(idle_s) = idle {
                return SessionError::StoppedIdle {
                    id: id.to_string(),
                    idle_s,
                    timeout_s: self.cfg.idle_timeout.unwrap_or_default().as_secs(),
                };
            }
            // Only this caller's sessions: ids are the key to a desktop.
            let mut known: Vec<String> = sessions
                .values()
                .filter(|s| caller.sees(&s.info.token))
                .map(|s| s.info.session_id.clone())
                .collect();
            known.sort();
            SessionError::UnknownSession {
                id: id.to_string(),
                known,
            }
        })
    }

    /// The running session `id`, or the error (recorded in the server's ledger) that says so.
    async fn session_for(
        &self,
        tool: &str,
        id: &str,
        args: &serde_json::Value,
        started: Instant,
    ) -> Result<Arc<Session>, SessionError> {
        self.get(id).await.inspect_err(|e| {
            let args = json!({ "session_id": id, "args": args });
            self.record_server(tool, args, Err(e), started);
        })
    }

    /// Each engine's health and capacity, when the server pools several (`--engine`).
    pub async fn engines_status(&self) -> Option<Vec<crate::backend::pool::EngineStatus>> {
        Some(self.cfg.engines.as_ref()?.status().await)
    }

    pub async fn list(&self) -> Vec<SessionInfo> {
        let started = Instant::now();
        let caller = Caller::current();
        let sessions = self.sessions.read().await;
        let mut list: Vec<SessionInfo> = sessions
            .values()
            .filter(|s| caller.sees(&s.info.token))
            .map(|s| {
                let mut info = s.info.clone();
                if s.exited().borrow().is_some() {
                    info.state = "failed".into();
                }
                info.viewers = Some(s.viewers.count());
                info.disk = Some(storage::usage::SessionDisk {
                    runtime_bytes: storage::usage::disk_bytes(&s.files.dir),
                    ledger_bytes: storage::usage::disk_bytes(&s.ledger.dir),
                });
                info
            })
            .collect();
        list.sort_by(|a, b| a.session_id.cmp(&b.session_id));
        let ids: Vec<&str> = list.iter().map(|s| s.session_id.as_str()).collect();
        self.record_server(
            "session_list",
            json!({}),
            Ok(&json!({ "sessions": ids })),
            started,
        );
        list
    }
}
