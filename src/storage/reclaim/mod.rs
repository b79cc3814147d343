//! `reclaim`: what deskvm holds on disk and in the Docker engine that nothing needs any more,
//! and removing it with a per-item account that is checked, not assumed.
//!
//! One scan decides; `apply` scans again under the cache lock and removes exactly what that
//! scan found, re-reading each owner marker just before deleting. Only things that carry
//! deskvm's marker (a directory's `.deskvm-owned`, a container's or image's `deskvm.*` labels,
//! an export's `review.json`) are ever candidates; a live instance's things never are.

mod checkpoints;
mod engine;
mod in_use;
mod remove;
mod scan;
mod shm;

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bollard::Docker;
use serde::{Deserialize, Serialize};

pub use engine::short_id;
pub use in_use::in_use;
pub use scan::{is_bundle, short as short_duration};

use super::owner::{Liveness, Owner, ProcessRef};
use super::{CacheLock, Layout};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Runtime dir, QEMU process and container of a session whose server is gone.
    OrphanSession,
    /// A half-built guest image, ready state or runtime image whose builder is gone.
    BuildWork,
    /// A guest image built from another recipe than this deskvm's.
    GuestImage,
    /// A ready state saved by a QEMU build or machine configuration nothing runs any more.
    ReadyState,
    /// A checkpoint only a QEMU build nothing runs any more could load, that no running
    /// session and no kept checkpoint depends on.
    Checkpoint,
    /// A `deskvm-runtime` image of another recipe that no container uses.
    RuntimeImage,
    /// The review ledger of a stopped session, past its retention age.
    Ledger,
    /// An exported review bundle, only when named in `include`.
    Export,
}

pub const ALL_KINDS: &[Kind] = &[
    Kind::OrphanSession,
    Kind::BuildWork,
    Kind::GuestImage,
    Kind::ReadyState,
    Kind::Checkpoint,
    Kind::RuntimeImage,
    Kind::Ledger,
    Kind::Export,
];

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::OrphanSession => "orphan_session",
            Kind::BuildWork => "build_work",
            Kind::GuestImage => "guest_image",
            Kind::ReadyState => "ready_state",
            Kind::Checkpoint => "checkpoint",
            Kind::RuntimeImage => "runtime_image",
            Kind::Ledger => "ledger",
            Kind::Export => "export",
        }
    }
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ALL_KINDS
            .iter()
            .copied()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = ALL_KINDS.iter().map(|k| k.as_str()).collect();
                format!("unknown kind {s:?}; valid: {}", names.join(", "))
            })
    }
}

/// One thing reclaim can remove, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    pub kind: Kind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// A QEMU process of an orphaned local session that still runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessRef>,
    /// A Docker image id, with its tags.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Bytes it holds on disk (allocated blocks; a Docker image's size).
    pub bytes: u64,
    pub why: String,
    /// The marker as scanned: apply re-reads it and skips the item if it changed.
    #[serde(skip)]
    pub(crate) owner: Option<Owner>,
}

/// Something deskvm saw but leaves alone, and why (no marker, another machine's, a build in
/// progress, in use): so a report explains what it did not list.
#[derive(Debug, Clone, Serialize)]
pub struct NotTouched {
    pub what: String,
    pub why: String,
}

/// The images and ready states this deskvm runs from, and the QEMU builds it knows.
#[derive(Debug, Clone, Default)]
pub struct Current {
    pub image_dirs: Vec<PathBuf>,
    pub ready_dirs: Vec<PathBuf>,
    /// QEMU builds sessions can run on now (local, and the current runtime image's).
    pub qemu_builds: Vec<String>,
    /// False when a build could not be learned (no local QEMU, engine not answering): ready
    /// states of unknown builds are then kept.
    pub builds_known: bool,
    /// The `deskvm-runtime` tag this deskvm runs.
    pub runtime_tag: String,
    /// The `deskvm-guest` tags of the current images and QEMU builds (`deskvm image push`).
    pub guest_tags: Vec<String>,
    /// Image names that earlier versions used, and the names they go by now (old, new).
    pub renamed: Vec<(String, String)>,
}

#[derive(Debug, Clone, Default)]
pub struct Request {
    pub apply: bool,
    /// Only these kinds (default: all; exports still only when named in `exports`).
    pub kinds: Option<Vec<Kind>>,
    /// Export bundles to remove, by name.
    pub exports: Vec<String>,
    /// Ledgers of stopped sessions last written longer ago than this (default: each ledger's
    /// retention, `DESKVM_REVIEW_RETENTION_DAYS`).
    pub older_than: Option<Duration>,
}

impl Request {
    fn wants(&self, kind: Kind) -> bool {
        self.kinds.as_ref().is_none_or(|k| k.contains(&kind))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Removed {
    #[serde(flatten)]
    pub item: Candidate,
    pub bytes_freed: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Failed {
    #[serde(flatten)]
    pub item: Candidate,
    pub error: String,
    /// Bytes that did go (part of a tree may have been removed before the failure).
    pub bytes_freed: u64,
    /// Bytes it still holds: not counted as freed.
    pub bytes_remaining: u64,
}

/// Totals per kind of what deskvm holds, live things included.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Usage {
    pub guest_images: Total,
    pub ready_states: Total,
    /// Saved checkpoints (a running session's current layer links to its latest one's disk,
    /// counted here and under sessions).
    pub checkpoints: Total,
    pub build_work: Total,
    pub sessions: Total,
    pub ledgers: Total,
    pub exports: Total,
    pub runtime_images: Total,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Total {
    pub count: u64,
    pub bytes: u64,
}

impl Total {
    fn add(&mut self, bytes: u64) {
        self.count += 1;
        self.bytes += bytes;
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub mode: &'static str,
    /// What can be removed (report) or what this apply set out to remove.
    pub candidates: Vec<Candidate>,
    pub candidate_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removed: Option<Vec<Removed>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed: Option<Vec<Failed>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_freed: Option<u64>,
    pub not_touched: Vec<NotTouched>,
    pub usage: Usage,
    /// What the latest startup janitor removed (any instance sharing this runtime dir).
    pub last_janitor: Option<serde_json::Value>,
    /// `null` when the engine did not answer: containers and images were not looked at.
    pub docker: Option<bool>,
    pub took_ms: u64,
}

/// What a scan sees: filled by `scan` and `engine`.
#[derive(Default)]
struct Scan {
    candidates: Vec<Candidate>,
    not_touched: Vec<NotTouched>,
    usage: Usage,
    /// Cache dirs live sessions, servers and builds run from.
    in_use: HashSet<PathBuf>,
    /// Docker image tags live sessions and servers run from.
    images_in_use: HashSet<String>,
    /// Records of servers that are gone (removed by an apply; bookkeeping, not reported).
    stale_instances: Vec<PathBuf>,
}

impl Scan {
    fn skip(&mut self, what: impl Into<String>, why: impl Into<String>) {
        self.not_touched.push(NotTouched {
            what: what.into(),
            why: why.into(),
        });
    }
}

/// The session containers of dead deskvm processes of this machine on an engine elsewhere
/// (`--engine`): reported, or with `req.apply` removed. Owners on other machines are never
/// judged.
pub async fn run_engine(docker: &Docker, req: &Request) -> Report {
    let started = Instant::now();
    let mut scan = Scan::default();
    engine::scan(docker, &Current::default(), req, &mut scan).await;
    let mut candidates = Vec::new();
    for c in scan.candidates {
        if c.kind != Kind::OrphanSession {
            continue;
        }
        // The stricter rule: an engine elsewhere may serve other machines' deskvm too.
        match c.owner.as_ref().map(Owner::liveness_on_shared_engine) {
            Some(Liveness::Dead(_)) => candidates.push(c),
            Some(Liveness::Unknown(why)) => scan.not_touched.push(NotTouched {
                what: format!("container {}", c.container.clone().unwrap_or_default()),
                why,
            }),
            _ => {}
        }
    }
    let mut report = Report {
        mode: if req.apply { "apply" } else { "report" },
        candidate_bytes: 0,
        candidates,
        removed: None,
        failed: None,
        bytes_freed: None,
        not_touched: scan.not_touched,
        usage: scan.usage,
        last_janitor: None,
        docker: Some(true),
        took_ms: 0,
    };
    if req.apply {
        let (removed, failed) = remove::all(Some(docker), &report.candidates).await;
        report.bytes_freed = Some(0);
        report.removed = Some(removed);
        report.failed = Some(failed);
    }
    report.took_ms = started.elapsed().as_millis() as u64;
    report
}

/// Reports (or, with `req.apply`, removes) what is reclaimable. `docker` is the engine to look
/// at, if one answers.
pub async fn run(
    layout: &Layout,
    current: &Current,
    docker: Option<&Docker>,
    req: &Request,
) -> std::io::Result<Report> {
    let started = Instant::now();
    // An apply that may remove images decides and deletes under the exclusive cache lock, so
    // no session can start from an image between "nothing uses it" and its removal. Reports,
    // and the janitor's orphans, need no lock.
    let images = [
        Kind::GuestImage,
        Kind::ReadyState,
        Kind::Checkpoint,
        Kind::RuntimeImage,
    ];
    let _lock = if req.apply && images.iter().any(|k| req.wants(*k)) {
        let layout = layout.clone();
        Some(
            tokio::task::spawn_blocking(move || CacheLock::exclusive(&layout))
                .await
                .map_err(std::io::Error::other)??,
        )
    } else {
        None
    };
    let mut scan = {
        let (layout, current, req) = (layout.clone(), current.clone(), req.clone());
        tokio::task::spawn_blocking(move || scan::filesystem(&layout, &current, &req))
            .await
            .map_err(std::io::Error::other)?
    };
    if let Some(docker) = docker {
        engine::scan(docker, current, req, &mut scan).await;
    }
    // (The scan already skips them; this guards the invariant where it matters most.)
    scan.candidates.retain(|c| {
        !matches!(
            c.kind,
            Kind::GuestImage | Kind::ReadyState | Kind::Checkpoint
        ) || c.path.as_ref().is_none_or(|p| !scan.in_use.contains(p))
    });
    let candidate_bytes = scan.candidates.iter().map(|c| c.bytes).sum();
    let stale_instances = std::mem::take(&mut scan.stale_instances);
    let mut report = Report {
        mode: if req.apply { "apply" } else { "report" },
        candidates: scan.candidates,
        candidate_bytes,
        removed: None,
        failed: None,
        bytes_freed: None,
        not_touched: scan.not_touched,
        usage: scan.usage,
        last_janitor: last_janitor(layout),
        docker: docker.map(|_| true),
        took_ms: 0,
    };
    if req.apply {
        for stale in &stale_instances {
            let _ = std::fs::remove_file(stale);
        }
        let (removed, failed) = remove::all(docker, &report.candidates).await;
        report.bytes_freed = Some(
            removed.iter().map(|r| r.bytes_freed).sum::<u64>()
                + failed.iter().map(|f| f.bytes_freed).sum::<u64>(),
        );
        report.removed = Some(removed);
        report.failed = Some(failed);
    }
    report.took_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// The latest startup janitor's account (`storage::janitor` writes it; the janitor runs reclaim,
/// so reading it here keeps the arrow one way), if any server has run one with this runtime dir.
fn last_janitor(layout: &Layout) -> Option<serde_json::Value> {
    serde_json::from_slice(&std::fs::read(layout.janitor_record()).ok()?).ok()
}
