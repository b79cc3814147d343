//! Checkpoints: a running session's whole machine saved under a name: its memory and device
//! state (QEMU's migration stream, as ready states are saved) and its disk overlay as it was at
//! that instant. They live in the cache (`checkpoints/<name>/`, the same files as a ready
//! state: `state.bin`, `disk.qcow2` backed by the ready state's or a parent checkpoint's disk),
//! outlive sessions and servers, and are restored in place or forked into new sessions.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::error::SessionError;
use super::Session;
use crate::image::ready::ReadyState;
use crate::storage::{self, Layout, Owner};
use crate::vm::VmError;

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
    /// How long the session's VM was paused to save it.
    pub pause_ms: u64,
    /// The checkpoint whose disk this one's layer sits on (None: the ready state's).
    pub parent: Option<String>,
    /// Where the pointer was, in screen pixels.
    pub pointer: (u32, u32),
}

pub fn dir(layout: &Layout, name: &str) -> PathBuf {
    layout.checkpoints().join(name)
}

fn meta_path(dir: &Path) -> PathBuf {
    dir.join("checkpoint.json")
}

/// A checkpoint by name, or `unknown_checkpoint` naming the ones there are.
pub fn load(layout: &Layout, name: &str) -> Result<(CheckpointInfo, ReadyState), SessionError> {
    super::check_name("checkpoint", name)?;
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

/// Every complete checkpoint, oldest first.
pub fn list(layout: &Layout) -> Vec<CheckpointInfo> {
    let mut out: Vec<CheckpointInfo> = std::fs::read_dir(layout.checkpoints())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read(meta_path(&e.path())).ok())
        .filter_map(|b| serde_json::from_slice(&b).ok())
        .collect();
    out.sort_by(|a: &CheckpointInfo, b| (a.created_at, &a.name).cmp(&(b.created_at, &b.name)));
    out
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
    std::fs::remove_dir_all(&ready.dir)?;
    if ready.dir.exists() {
        return Err(SessionError::Io(std::io::Error::other(format!(
            "{} is still there after removing it",
            ready.dir.display()
        ))));
    }
    Ok(bytes)
}

/// The checkpoint a disk layer sits on, from its qcow2 backing file.
async fn parent_of(layout: &Layout, disk: &Path) -> Option<String> {
    let out = tokio::process::Command::new("qemu-img")
        .args(["info", "--output=json", "-U"])
        .arg(disk)
        .output()
        .await
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let backing = PathBuf::from(v["full-backing-filename"].as_str()?);
    let parent = backing.parent()?;
    (parent.parent()? == layout.checkpoints())
        .then(|| parent.file_name()?.to_str().map(str::to_string))
        .flatten()
}

/// Moves a file, copying when it crosses filesystems (the runtime dir is often a tmpfs).
fn move_file(from: &Path, to: &Path) -> std::io::Result<()> {
    if std::fs::rename(from, to).is_err() {
        std::fs::copy(from, to)?;
        std::fs::remove_file(from)?;
    }
    Ok(())
}

impl Session {
    /// Saves the running machine as checkpoint `name`; the session keeps running.
    pub(super) async fn checkpoint(
        &self,
        layout: &Layout,
        name: &str,
        qemu_version: &str,
    ) -> Result<CheckpointInfo, SessionError> {
        let target = dir(layout, name);
        if target.exists() {
            return Err(SessionError::InvalidName {
                field: "checkpoint",
                value: name.to_string(),
                why: "a checkpoint of that name exists; delete it or choose another".into(),
            });
        }
        self.check_alive()?;
        self.finish_capture().await;
        let mut lane = self.lane.lock().await;
        let partial = target.with_extension("partial");
        // A checkpoint's files are a ready state's.
        let files = ReadyState {
            dir: partial.clone(),
        };
        let _ = std::fs::remove_dir_all(&partial);
        storage::owned_dir(
            &partial,
            &Owner::me("checkpoint", Some(&self.info.session_id)),
        )?;
        // QEMU writes the state where it can (a container sees the runtime dir, not the
        // cache read-write); it is moved into the checkpoint afterwards.
        let state = self.files.dir.join("checkpoint.state");
        let paused = Instant::now();
        let saved = lane
            .vm
            .qmp()
            .save_state(&state, Duration::from_secs(120))
            .await;
        // The saved state has flushed the disk: its overlay is the disk of that instant.
        let copied = match saved {
            Ok(()) => std::fs::copy(self.files.disk(), files.disk()).map(|_| ()),
            Err(_) => Ok(()),
        };
        let resumed = lane.vm.qmp().cont().await;
        let pause_ms = paused.elapsed().as_millis() as u64;
        let cleanup = |e: SessionError| {
            let _ = std::fs::remove_dir_all(&partial);
            let _ = std::fs::remove_file(&state);
            Err(e)
        };
        if let Err(e) = saved.and(resumed) {
            return cleanup(VmError::from(e).into());
        }
        if let Err(e) = copied.and_then(|()| move_file(&state, &files.state())) {
            return cleanup(e.into());
        }
        lane.changed_since_frame = true;
        let pointer = lane.pointer;
        drop(lane);
        let _ = files.seal();
        let info = CheckpointInfo {
            name: name.to_string(),
            source_session: self.info.session_id.clone(),
            created_at: storage::owner::unix_now(),
            qemu_version: qemu_version.to_string(),
            image: self.info.image.clone(),
            width: self.info.width,
            height: self.info.height,
            memory_mb: self.info.memory_mb,
            network: self.info.network,
            bytes: storage::usage::disk_bytes(&partial),
            pause_ms,
            parent: parent_of(layout, &files.disk()).await,
            pointer,
        };
        let written = serde_json::to_vec_pretty(&info)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(meta_path(&partial), b))
            .and_then(|()| std::fs::rename(&partial, &target));
        if let Err(e) = written {
            return cleanup(e.into());
        }
        Ok(info)
    }
}
