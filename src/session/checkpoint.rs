//! Checkpoints: a running session's whole machine saved under a name: its memory and device
//! state (QEMU's migration stream, written while the guest runs) and its disk as it was at
//! that instant. The disk is layered: the session's overlay is frozen as the checkpoint's layer
//! and the session goes on in a new overlay above it, so a checkpoint holds only what changed
//! since the one before. They live in the cache (`checkpoints/<name>/`, the same files as a
//! ready state: `state.bin`, `disk.qcow2` backed by the ready state's or a parent checkpoint's
//! disk), outlive sessions and servers, and are restored in place or forked into new sessions.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::SessionError;
use crate::guest_image::ready::ReadyState;
use crate::storage::{self, Layout, Owner};
use crate::storage::{IoContext, IoError};

/// What a checkpoint is and what it needs to run again.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CheckpointInfo {
    pub name: String,
    pub source_session: String,
    /// Unix seconds.
    pub created_at: u64,
    /// The QEMU build that saved it: only that build can load it.
    pub qemu_version: String,
    pub image: String,
    pub width: u32,
    pub height: u32,
    pub memory_mb: u32,
    pub network: bool,
    /// Bytes on disk: the state and this checkpoint's own disk layer.
    pub bytes: u64,
    /// Of those, the disk layer: what the guest wrote since the checkpoint below (or since
    /// its session started).
    #[serde(default)]
    pub layer_bytes: u64,
    /// How long the session's VM was paused to save it.
    pub pause_ms: u64,
    /// The checkpoint whose disk this one's layer sits on (None: the ready state's).
    pub parent: Option<String>,
    /// Where the pointer was, in screen pixels.
    pub pointer: (u32, u32),
    /// The backend whose session it was saved from ("local", "docker"); either backend runs
    /// it when its QEMU build is the same.
    #[serde(default)]
    pub backend: String,
    /// The virtual hardware it was saved on ([`crate::vm::spec::MACHINE_GENERATION`]); absent
    /// in checkpoints of generation 1.
    #[serde(default = "generation_1")]
    pub machine: u32,
    /// The layers it needs, oldest first: the ready state's directory, then each checkpoint
    /// below it (filled in when listed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
}

fn generation_1() -> u32 {
    1
}

pub fn dir(layout: &Layout, name: &str) -> PathBuf {
    layout.checkpoints().join(name)
}

pub(super) fn meta_path(dir: &Path) -> PathBuf {
    dir.join("checkpoint.json")
}

/// A checkpoint by name, or `unknown_checkpoint` naming the ones there are.
pub fn load(layout: &Layout, name: &str) -> Result<(CheckpointInfo, ReadyState), SessionError> {
    check_name(name)?;
    let d = dir(layout, name);
    let info = std::fs::read(meta_path(&d))
        .ok()
        .and_then(|b| serde_json::from_slice::<CheckpointInfo>(&b).ok());
    match info {
        Some(info) => Ok((info, ReadyState { dir: d })),
        None => Err(SessionError::UnknownCheckpoint {
            name: name.to_string(),
            known: list(layout).into_iter().map(|c| c.name).collect(),
        }),
    }
}

/// Every complete checkpoint, oldest first, each with the layers it depends on.
pub fn list(layout: &Layout) -> Vec<CheckpointInfo> {
    let mut out: Vec<CheckpointInfo> = std::fs::read_dir(layout.checkpoints())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().ends_with(".partial"))
        .filter_map(|e| std::fs::read(meta_path(&e.path())).ok())
        .filter_map(|b| serde_json::from_slice(&b).ok())
        .collect();
    out.sort_by(|a: &CheckpointInfo, b| (a.created_at, &a.name).cmp(&(b.created_at, &b.name)));
    let parents: std::collections::HashMap<String, Option<String>> = out
        .iter()
        .map(|c| (c.name.clone(), c.parent.clone()))
        .collect();
    for c in &mut out {
        let mut chain = Vec::new();
        let mut lowest = c.name.clone();
        let mut at = c.parent.clone();
        // (Bounded: a cycle cannot be made, but a hand-edited file could claim one.)
        while let Some(p) = at.filter(|_| chain.len() < parents.len()) {
            at = parents.get(&p).cloned().flatten();
            chain.push(format!("checkpoint {p}"));
            lowest = p;
        }
        // The ready state is what the lowest checkpoint's session ran on (a fork's own
        // marker names the checkpoint it started from instead).
        let root = Owner::read(&dir(layout, &lowest)).and_then(|o| {
            o.uses
                .into_iter()
                .find(|u| u.starts_with(layout.images()) && storage::is_ready_dir(u))
        });
        chain.extend(root.map(|r| format!("ready state {}", r.display())));
        chain.reverse();
        c.depends_on = chain;
    }
    out
}

/// Checkpoint names: the session's name rules, and not a name the cache uses for work.
pub fn check_name(name: &str) -> Result<(), SessionError> {
    super::check_name("checkpoint", name)?;
    if name.ends_with(".partial") || name.ends_with(".recipe") {
        return Err(SessionError::InvalidName {
            field: "checkpoint",
            value: name.to_string(),
            why: "names ending in .partial or .recipe are reserved for work in progress".into(),
        });
    }
    Ok(())
}

/// Why a checkpoint cannot be deleted: live sessions (of any server) running on it, and
/// checkpoints whose layers sit on it.
pub fn dependents(layout: &Layout, name: &str) -> Vec<String> {
    let d = dir(layout, name);
    let mut out: Vec<String> = std::fs::read_dir(layout.sessions())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Owner::read(&e.path()))
        .filter(|o| {
            o.uses.contains(&d) && !matches!(o.liveness(), storage::owner::Liveness::Dead(_))
        })
        .map(|o| format!("session {}", o.session.unwrap_or_default()))
        .collect();
    out.extend(
        list(layout)
            .into_iter()
            .filter(|c| c.parent.as_deref() == Some(name))
            .map(|c| format!("checkpoint {}", c.name)),
    );
    out
}

pub fn delete(layout: &Layout, name: &str) -> Result<u64, SessionError> {
    let (_, ready) = load(layout, name)?;
    let deps = dependents(layout, name);
    if !deps.is_empty() {
        return Err(SessionError::InUse {
            what: format!("checkpoint {name}"),
            by: deps,
        });
    }
    let bytes = storage::usage::disk_bytes(&ready.dir);
    std::fs::remove_dir_all(&ready.dir).at("removing checkpoint", &ready.dir)?;
    if ready.dir.exists() {
        return Err(IoError::new(
            "removing checkpoint",
            &ready.dir,
            std::io::Error::other("it is still there after its removal"),
        )
        .into());
    }
    Ok(bytes)
}
