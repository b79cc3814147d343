//! Saving a checkpoint of a running session: the memory state by a live migration, the disk
//! by freezing the session's layer and continuing on a new one above it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::checkpoint::{dir, meta_path, CheckpointInfo};
use super::error::SessionError;
use super::lane::Lane;
use super::Session;
use crate::guest_image::ready::ReadyState;
use crate::storage::{self, IoContext, IoError, Layout, Owner};
use crate::vm::qmp::LiveSave;
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

/// A checkpoint that is not completed must not be named by the session's new layer: its header
/// names the frozen layer where QEMU opened it instead.
async fn unlink_header(qmp: &crate::vm::qmp::Qmp, node: &str, frozen: &Path) {
    if let Err(e) = qmp.change_backing_file(node, frozen).await {
        tracing::error!(error = %e, "a failed checkpoint's layer still names it as its backing file");
    }
}

/// Block node names must be unique within a QEMU process; one counter serves them all.
static LAYERS: AtomicU64 = AtomicU64::new(1);

/// Takes checkpoint name `name` in the state root, atomically: a concurrent checkpoint of the
/// same name fails here, before any layer's header can name its directory.
fn claim(layout: &Layout, name: &str) -> Result<PathBuf, SessionError> {
    // The state root may be new: nothing but this makes its checkpoints dir. Recording the root
    // in the image store keeps what its checkpoints sit on from any reclaim.
    let all = layout.checkpoints();
    storage::private_dir(&all).at("creating the checkpoints dir", &all)?;
    storage::roots::register(layout)?;
    let target = dir(layout, name);
    match std::fs::create_dir(&target).at("creating checkpoint dir", &target) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(SessionError::InvalidName {
            field: "checkpoint",
            value: name.to_string(),
            why: "a checkpoint of that name exists; delete it or choose another".into(),
        }),
        r => r.map(|()| target).map_err(SessionError::from),
    }
}

/// Writes `checkpoint.json` last, and whole: a reader sees none or a complete one.
fn write_meta(target: &Path, info: &CheckpointInfo) -> Result<(), IoError> {
    let tmp = target.join(".checkpoint.json.tmp");
    serde_json::to_vec_pretty(info)
        .map_err(std::io::Error::other)
        .and_then(|b| std::fs::write(&tmp, b))
        .and_then(|()| std::fs::rename(&tmp, meta_path(target)))
        .at("writing", &meta_path(target))
}

/// A checkpoint being saved: where its files go and which of the session's files it touches,
/// so that a failure at any step takes back what the steps before it did.
struct Saving<'a> {
    session: &'a Session,
    target: PathBuf,
    /// The memory state, written where QEMU can (a container sees the runtime dir read-write,
    /// the cache read-only); it goes into the checkpoint afterwards.
    state: PathBuf,
    /// The block node name of the session's new layer, and its file.
    node: String,
    next: PathBuf,
    /// The layer being frozen: the checkpoint's, once saved.
    frozen: PathBuf,
}

impl Saving<'_> {
    /// Takes back a checkpoint whose new layer the guest may already write to: its dir, its
    /// state and the marker's entry for it go; the layer stays.
    fn abandon<T>(&self, e: SessionError) -> Result<T, SessionError> {
        let _ = std::fs::remove_dir_all(&self.target);
        let _ = std::fs::remove_file(&self.state);
        // Logged: a marker naming a checkpoint that is gone only keeps reclaim from a dir
        // that is not there.
        if let Err(me) = self.session.mark_uses(&self.target, false) {
            tracing::warn!(error = %me, "a failed checkpoint is still named in its session's owner marker");
        }
        Err(e)
    }

    /// Takes back a checkpoint before the guest writes to its new layer: the layer goes too.
    fn discard<T>(&self, e: SessionError) -> Result<T, SessionError> {
        let _ = std::fs::remove_file(&self.next);
        self.abandon(e)
    }

    /// Like [`Saving::abandon`], once the new layer's header names the checkpoint's disk: it
    /// is made to name the frozen layer where QEMU opened it instead.
    async fn unlink_and_abandon<T>(&self, lane: &Lane, e: SessionError) -> Result<T, SessionError> {
        unlink_header(lane.qmp(), &self.node, &self.frozen).await;
        self.abandon(e)
    }

    /// The session's marker names the checkpoint (so reclaim keeps it and what it sits on), and
    /// the checkpoint's own marker names what the session runs on: it needs that too. Until
    /// checkpoint.json is written it is work in progress of this process.
    fn mark(&self) -> Result<(), IoError> {
        let below = Owner::read(&self.session.files.dir)
            .map(|o| o.uses)
            .unwrap_or_default();
        Owner::me("checkpoint", Some(&self.session.info.session_id))
            .uses(below)
            .write(&self.target)
            .and_then(|()| self.session.mark_uses(&self.target, true))
            .map_err(|e| IoError::new("marking the checkpoint's owner in", &self.target, e))
    }

    /// A new layer whose header names the checkpoint's disk (what a restart or a later
    /// checkpoint of this session opens below it); and the checkpoint the frozen layer sits on.
    async fn prepare_layer(
        &self,
        layout: &Layout,
        disk: &Path,
    ) -> Result<Option<String>, SessionError> {
        let (size, parent) = layer_info(layout, &self.frozen).await?;
        new_layer(disk, size, &self.next).await.map(|()| parent)
    }

    /// Saves the memory state while the guest runs, then, the guest stopped and its disk
    /// flushed, freezes its layer and moves it to the new one, and resumes it. Gives the save's
    /// figures and how long the guest was paused.
    async fn freeze(&self, lane: &mut Lane) -> Result<(LiveSave, u64), SessionError> {
        let qmp = lane.qmp();
        // Every page goes into a checkpoint, a template clone's too: it then loads into any
        // machine of this configuration (the capability would leave shared RAM out and mark
        // the stream so only a machine with it on could read it).
        let saved = match qmp.ignore_shared_memory(false).await {
            Ok(()) => {
                qmp.save_state_live(
                    &self.state,
                    Duration::from_secs(5),
                    Duration::from_secs(120),
                )
                .await
            }
            Err(e) => Err(e),
        };
        let switched = match &saved {
            Ok(_) => qmp.snapshot_disk(&self.next, &self.node).await,
            Err(_) => Ok(()),
        };
        let resumed = qmp.cont().await;
        let done = Instant::now();
        if let (Ok(_), Ok(())) = (&saved, &switched) {
            // The guest writes to the new layer from here on, whatever else fails.
            lane.switch_disk(self.next.clone());
        }
        let switched_ok = lane.disk() == self.next;
        let save = match saved.and_then(|s| switched.and(resumed).map(|()| s)) {
            Ok(s) => s,
            Err(e) if switched_ok => {
                return self.unlink_and_abandon(lane, VmError::from(e).into()).await
            }
            Err(e) => return self.discard(VmError::from(e).into()),
        };
        let pause_ms = done
            .duration_since(save.stopped_no_earlier_than)
            .as_millis() as u64;
        Ok((save, pause_ms))
    }
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

    /// Saves the running machine as checkpoint `name`; the session keeps running. The guest is
    /// paused only for the end of the memory save and the disk switch.
    pub(super) async fn checkpoint(
        &self,
        layout: &Layout,
        name: &str,
        qemu_version: &str,
        backend: &str,
    ) -> Result<CheckpointInfo, SessionError> {
        self.check_alive()?;
        self.finish_capture().await;
        let mut lane = self.lane.lock().await;
        let target = claim(layout, name)?;
        let node = format!("layer{}", LAYERS.fetch_add(1, Ordering::Relaxed));
        let saving = Saving {
            session: self,
            state: self.files.dir.join("checkpoint.state"),
            next: self.files.dir.join(format!("disk-{node}.qcow2")),
            frozen: lane.disk().to_path_buf(),
            node,
            target,
        };
        // A checkpoint's files are a ready state's.
        let files = ReadyState {
            dir: saving.target.clone(),
        };
        if let Err(e) = saving.mark() {
            return saving.discard(e.into());
        }
        let parent = match saving.prepare_layer(layout, &files.disk()).await {
            Ok(parent) => parent,
            Err(e) => return saving.discard(e),
        };
        let (save, pause_ms) = saving.freeze(&mut lane).await?;
        lane.mark_changed();
        let pointer = lane.pointer();
        // The frozen layer is read-only to QEMU now, and stays where QEMU opened it: the
        // checkpoint gets a link to it.
        let moved = link_or_copy(&saving.frozen, &files.disk())
            .at("linking the frozen disk layer into", &saving.target)
            .and_then(|()| {
                move_file(&saving.state, &files.state()).at("moving the state into", &saving.target)
            });
        if let Err(e) = moved {
            return saving.unlink_and_abandon(&lane, e.into()).await;
        }
        drop(lane);
        // Read-only files guard a checkpoint against a stray write; one left writable still
        // loads, so sealing does not decide the checkpoint.
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
            network: self.net.mode == super::network::NetworkMode::Open,
            bytes: storage::usage::disk_bytes(&saving.target),
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
        if let Err(e) = write_meta(&saving.target, &info) {
            // The layer is frozen and linked; only the metadata is missing. The session's
            // new layer must not name a checkpoint that will not exist.
            let lane = self.lane.lock().await;
            return saving.unlink_and_abandon(&lane, e.into()).await;
        }
        Ok(info)
    }
}
