//! Saving a checkpoint of a running session: the memory state by a live migration, the disk
//! by freezing the session's layer and continuing on a new one above it.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::checkpoint::{dir, meta_path, CheckpointInfo};
use super::error::SessionError;
use super::Session;
use crate::image::ready::ReadyState;
use crate::storage::{self, IoContext, IoError, Layout, Owner};
use crate::vm::VmError;

/// Puts a frozen file into a checkpoint: a hard link where both are on one filesystem (QEMU
/// goes on reading the runtime dir's name, which must stay), else a copy.
fn link_or_copy(from: &Path, to: &Path) -> std::io::Result<()> {
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to)?;
    }
    Ok(())
}

/// Moves a file, copying when it crosses filesystems (the runtime dir is often a tmpfs).
fn move_file(from: &Path, to: &Path) -> std::io::Result<()> {
    if std::fs::rename(from, to).is_err() {
        std::fs::copy(from, to)?;
        std::fs::remove_file(from)?;
    }
    Ok(())
}

/// What a running layer is: its virtual size in bytes (a new layer above it has the same) and
/// the checkpoint it sits on (from its qcow2 backing file; None: a ready state's disk). One
/// `qemu-img info`, before the guest is paused: the layer's header does not change when it
/// is frozen.
async fn layer_info(layout: &Layout, disk: &Path) -> Result<(u64, Option<String>), SessionError> {
    let out = tokio::process::Command::new("qemu-img")
        .args(["info", "--output=json", "-U"])
        .arg(disk)
        .output()
        .await
        .at("running qemu-img info on", disk)?;
    let v = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default();
    let size = v["virtual-size"].as_u64().ok_or_else(|| {
        SessionError::Setup(format!(
            "qemu-img info {} failed: {}",
            disk.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    })?;
    let parent = v["full-backing-filename"]
        .as_str()
        .map(Path::new)
        .and_then(Path::parent)
        .filter(|d| d.parent() == Some(layout.checkpoints().as_path()))
        .and_then(|d| d.file_name()?.to_str().map(str::to_string));
    Ok((size, parent))
}

/// A new qcow2 layer whose header names `backing` without opening it (it does not exist yet:
/// it is where the running layer goes once frozen).
async fn new_layer(backing: &Path, size: u64, layer: &Path) -> Result<(), SessionError> {
    let out = tokio::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-u", "-b"])
        .arg(backing)
        .arg(layer)
        .arg(size.to_string())
        .output()
        .await
        .at("running qemu-img create for", layer)?;
    if !out.status.success() {
        return Err(SessionError::Setup(format!(
            "qemu-img create failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

impl Session {
    /// Adds (or removes) `dir` in what this session's marker says it runs on.
    fn mark_uses(&self, dir: &Path, on: bool) -> std::io::Result<()> {
        let mut owner = Owner::read(&self.files.dir)
            .ok_or_else(|| std::io::Error::other("the session's owner marker is unreadable"))?;
        owner.uses.retain(|u| u != dir);
        if on {
            owner.uses.push(dir.to_path_buf());
        }
        owner.write(&self.files.dir)
    }
}

/// A checkpoint that is not completed must not be named by the session's new layer: its header
/// names the frozen layer where QEMU opened it instead.
async fn unlink_header(qmp: &crate::vm::qmp::Qmp, node: &str, frozen: &Path) {
    if let Err(e) = qmp.change_backing_file(node, frozen).await {
        tracing::error!(error = %e, "a failed checkpoint's layer still names it as its backing file");
    }
}

/// Block node names must be unique within a QEMU process; one counter serves them all.
static LAYERS: AtomicU64 = AtomicU64::new(1);

impl Session {
    /// Refuses `what` (checkpoint, restore) for a session on an engine elsewhere.
    pub(super) fn on_this_host(&self, what: &'static str) -> Result<(), SessionError> {
        match self.backend.files_on_host() {
            true => Ok(()),
            false => Err(SessionError::NotOnEngine {
                what,
                engine: self.info.engine.clone().unwrap_or_default(),
            }),
        }
    }
}

impl Session {
    /// Saves the running machine as checkpoint `name`; the session keeps running. The guest is
    /// paused only for the end of the memory save and the disk switch.
    pub(super) async fn checkpoint(
        &self,
        layout: &Layout,
        name: &str,
        qemu_version: &str,
        backend: &str,
    ) -> Result<CheckpointInfo, SessionError> {
        let target = dir(layout, name);
        self.check_alive()?;
        self.finish_capture().await;
        let mut lane = self.lane.lock().await;
        // The state root may be new: nothing but this makes its checkpoints dir. Recording
        // the root in the image store keeps what its checkpoints sit on from any reclaim.
        let all = layout.checkpoints();
        storage::private_dir(&all).at("creating the checkpoints dir", &all)?;
        storage::roots::register(layout)?;
        // The name is taken atomically: a concurrent checkpoint of the same name fails here,
        // before any layer's header can name this directory.
        match std::fs::create_dir(&target).at("creating checkpoint dir", &target) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(SessionError::InvalidName {
                    field: "checkpoint",
                    value: name.to_string(),
                    why: "a checkpoint of that name exists; delete it or choose another".into(),
                })
            }
            r => r?,
        }
        // A checkpoint's files are a ready state's. What the session runs on (image, ready
        // state, the checkpoint below) is what this checkpoint needs too: reclaim keeps it.
        // Until checkpoint.json is written it is work in progress of this process.
        let files = ReadyState {
            dir: target.clone(),
        };
        let below = Owner::read(&self.files.dir)
            .map(|o| o.uses)
            .unwrap_or_default();
        let marked = Owner::me("checkpoint", Some(&self.info.session_id))
            .uses(below)
            .write(&target)
            .and_then(|()| self.mark_uses(&target, true));
        // QEMU writes where it can (a container sees the runtime dir read-write, the cache
        // read-only); the files go into the checkpoint afterwards.
        let state = self.files.dir.join("checkpoint.state");
        let node = format!("layer{}", LAYERS.fetch_add(1, Ordering::Relaxed));
        let next = self.files.dir.join(format!("disk-{node}.qcow2"));
        let after_switch = |e: SessionError| {
            let _ = std::fs::remove_dir_all(&target);
            let _ = std::fs::remove_file(&state);
            let _ = self.mark_uses(&target, false);
            Err(e)
        };
        let cleanup = |e: SessionError| {
            let _ = std::fs::remove_file(&next);
            after_switch(e)
        };
        if let Err(e) = marked {
            return cleanup(IoError::new("marking the checkpoint's owner in", &target, e).into());
        }
        let frozen = lane.disk.clone();
        // The header of the new layer names the checkpoint's path: what a restart or a later
        // checkpoint of this session opens below it.
        let prepared = async {
            let (size, parent) = layer_info(layout, &lane.disk).await?;
            new_layer(&files.disk(), size, &next).await.map(|()| parent)
        };
        let parent = match prepared.await {
            Ok(parent) => parent,
            Err(e) => return cleanup(e),
        };
        let qmp = lane.vm.qmp();
        // Every page goes into a checkpoint, a template clone's too: it then loads into any
        // machine of this configuration (the capability would leave shared RAM out and mark
        // the stream so only a machine with it on could read it).
        let saved = match qmp.ignore_shared_memory(false).await {
            Ok(()) => {
                qmp.save_state_live(&state, Duration::from_secs(5), Duration::from_secs(120))
                    .await
            }
            Err(e) => Err(e),
        };
        // The guest is stopped and its disk flushed: freeze the layer of this instant.
        let switched = match &saved {
            Ok(_) => qmp.snapshot_disk(&next, &node).await,
            Err(_) => Ok(()),
        };
        let resumed = qmp.cont().await;
        let done = Instant::now();
        if let (Ok(_), Ok(())) = (&saved, &switched) {
            // The guest writes to the new layer from here on, whatever else fails.
            lane.disk = next.clone();
        }
        let switched_ok = lane.disk == next;
        let save = match saved.and_then(|s| switched.and(resumed).map(|()| s)) {
            Ok(s) => s,
            Err(e) if switched_ok => {
                unlink_header(lane.vm.qmp(), &node, &frozen).await;
                return after_switch(VmError::from(e).into());
            }
            Err(e) => return cleanup(VmError::from(e).into()),
        };
        let pause_ms = done
            .duration_since(save.stopped_no_earlier_than)
            .as_millis() as u64;
        lane.changed_since_frame = true;
        let pointer = lane.pointer;
        // The frozen layer is read-only to QEMU now, and stays where QEMU opened it: the
        // checkpoint gets a link to it.
        let moved = link_or_copy(&frozen, &files.disk())
            .at("linking the frozen disk layer into", &target)
            .and_then(|()| move_file(&state, &files.state()).at("moving the state into", &target));
        if let Err(e) = moved {
            unlink_header(lane.vm.qmp(), &node, &frozen).await;
            return after_switch(e.into());
        }
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
            bytes: storage::usage::disk_bytes(&target),
            layer_bytes: storage::usage::disk_bytes(&files.disk()),
            pause_ms,
            parent,
            pointer,
            backend: backend.to_string(),
            machine: crate::vm::spec::MACHINE_GENERATION,
            depends_on: Vec::new(),
        };
        tracing::debug!(
            name,
            pause_ms,
            downtime_ms = save.downtime_ms,
            forced = save.forced_stop,
            "checkpoint saved"
        );
        // Written last, and whole (a reader sees no checkpoint.json or a complete one).
        let tmp = target.join(".checkpoint.json.tmp");
        let written = serde_json::to_vec_pretty(&info)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, meta_path(&target)))
            .at("writing", &meta_path(&target));
        if let Err(e) = written {
            // The layer is frozen and linked; only the metadata is missing. The session's
            // new layer must not name a checkpoint that will not exist.
            unlink_header(self.lane.lock().await.vm.qmp(), &node, &frozen).await;
            return after_switch(e.into());
        }
        Ok(info)
    }
}
