//! The manager's side of checkpoints: `checkpoint`, `restore` in place, forks' source, list and
//! delete, each recorded in the review ledger.

use std::time::Instant;

use serde_json::{json, Value};

use super::checkpoint::{self, CheckpointInfo};
use super::{boot, watch_exit, Session, SessionError, SessionManager, StartRequest};
use crate::backend::Backend;
use crate::guest_image::ready::ReadyState;
use crate::guest_image::GuestImage;
use crate::storage::{IoError, Owner};
use crate::vm::spec::VmSpec;

/// The session's disk layers go before a restore (a checkpoint keeps its own link to the ones
/// it froze). A layer left behind only takes space until the session's runtime dir goes.
fn remove_layers(dir: &std::path::Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let n = e.file_name();
        let n = n.to_string_lossy();
        if n.starts_with("disk") && n.ends_with(".qcow2") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Checkpoint names: `<session>-<n>` when none is given.
fn default_name(session: &str) -> String {
    format!("{session}-{}", crate::storage::owner::unix_now())
}

impl SessionManager {
    /// The checkpoint a checkpoint-bound call names, checked against this server's QEMU build.
    fn usable(
        &self,
        name: &str,
        backend: &dyn Backend,
    ) -> Result<(CheckpointInfo, ReadyState), SessionError> {
        let (info, ready) = checkpoint::load(&self.cfg.layout, name)?;
        let here = backend.qemu_version();
        let generation = crate::vm::spec::MACHINE_GENERATION;
        if info.machine != generation {
            return Err(SessionError::Incompatible {
                name: name.to_string(),
                why: format!(
                    "it was saved on deskvm's virtual hardware generation {}, this server runs generation {generation} (other devices); delete it with checkpoint_delete",
                    info.machine
                ),
            });
        }
        if info.qemu_version != here {
            return Err(SessionError::Incompatible {
                name: name.to_string(),
                why: format!(
                    "it was saved by {}, this server runs {here}",
                    info.qemu_version
                ),
            });
        }
        Ok((info, ready))
    }

    pub async fn checkpoint(
        &self,
        id: &str,
        name: Option<&str>,
    ) -> Result<CheckpointInfo, SessionError> {
        let started = Instant::now();
        let args = json!({ "name": name });
        let session = self.session_for("checkpoint", id, &args, started).await?;
        let name = name.map(str::to_string).unwrap_or_else(|| default_name(id));
        let result = async {
            checkpoint::check_name(&name)?;
            session.on_this_host("checkpoint")?;
            let backend = &session.backend;
            session
                .checkpoint(
                    &self.cfg.layout,
                    &name,
                    backend.qemu_version(),
                    backend.name(),
                )
                .await
        }
        .await;
        let outcome = result
            .as_ref()
            .map(|i| serde_json::to_value(i).unwrap_or_default());
        self.record_on(
            &session,
            "checkpoint",
            args,
            outcome.as_ref().map_err(|e| *e),
            started,
        );
        result
    }

    /// Rolls a running session back to a checkpoint: a new VM from the checkpoint's state and
    /// disk replaces the session's, under the same id and ledger.
    pub async fn restore(&self, id: &str, name: &str) -> Result<Value, SessionError> {
        let started = Instant::now();
        let args = json!({ "checkpoint": name });
        let session = self.session_for("restore", id, &args, started).await?;
        let result = self.restore_inner(&session, name, started).await;
        self.record_on(&session, "restore", args, result.as_ref(), started);
        result
    }

    async fn restore_inner(
        &self,
        session: &Session,
        name: &str,
        started: Instant,
    ) -> Result<Value, SessionError> {
        session.on_this_host("restore")?;
        // Held until the session's marker names the checkpoint, as a fork's start does.
        let cache_lock = self.lock_cache_shared().await?;
        let (info, ready) = self.restorable(session, name)?;
        let image = GuestImage::locate(&self.cfg.layout, &info.image)?;
        let mut spec = self.machine_spec(
            &image,
            Some(info.memory_mb),
            session.net.mode == super::network::NetworkMode::Open,
        );
        spec.guestfwd = session.guestfwd();
        session.finish_capture().await;
        let mut lane = session.lane.lock().await;
        lane.stop_vm(true).await;
        remove_layers(&session.files.dir);
        let mut booted = boot::start_vm(
            session.backend.as_ref(),
            &session.info.session_id,
            &image,
            spec,
            Some(&ready),
            &session.files,
        )
        .await?;
        booted.vm.sync_clock_in_background();
        // The checkpoint's guest was set up for the network of the session that saved it.
        if session.net.needs_guest() {
            let agent = ready.has_agent();
            if let Err(e) = super::network::configure_guest(&booted.vm, &session.net, agent).await {
                booted.instance.stop().await;
                return Err(e);
            }
        }
        // Fails the restore, as a failed boot would: without the marker naming the checkpoint,
        // a reclaim could delete the disk the new VM runs on.
        if let Err(e) = self.mark_runs_on(session, &ready) {
            booted.instance.stop().await;
            return Err(e.into());
        }
        drop(cache_lock);
        let exited = booted.instance.exited();
        watch_exit(
            &session.info.session_id,
            exited.clone(),
            session.ledger.clone(),
        );
        *session.exited.lock().expect("exit watch poisoned") = exited;
        lane.replace_vm(booted.vm, booted.instance, info.pointer);
        session.viewers.set_link(lane.link());
        let first = lane.look().await?;
        drop(lane);
        let shot = session.ledger.shots.put(&first.frame, &first.hash);
        let ms = started.elapsed().as_millis() as u64;
        Ok(json!({ "ok": true, "checkpoint": name, "restore_ms": ms, "shot": shot }))
    }

    /// Checkpoint `name`, if it can replace the session's machine: this QEMU build's, and of the
    /// session's image, size and memory (every network mode runs on the same machine).
    fn restorable(
        &self,
        session: &Session,
        name: &str,
    ) -> Result<(CheckpointInfo, ReadyState), SessionError> {
        let (info, ready) = self.usable(name, session.backend.as_ref())?;
        let s = &session.info;
        if (info.image.as_str(), info.width, info.height, info.memory_mb)
            != (s.image.as_str(), s.width, s.height, s.memory_mb)
        {
            return Err(SessionError::Incompatible {
                name: name.to_string(),
                why: format!(
                    "it is a {}x{} {} MiB {} desktop, the session a {}x{} {} MiB {} one; fork it with session_start {{from_checkpoint}} instead",
                    info.width, info.height, info.memory_mb, info.image, s.width, s.height, s.memory_mb, s.image
                ),
            });
        }
        Ok((info, ready))
    }

    /// The session now runs on this checkpoint's disk alone (the layers it had are gone): its
    /// marker says so, so this checkpoint is not deleted under it and others may be.
    fn mark_runs_on(&self, session: &Session, ready: &ReadyState) -> Result<(), IoError> {
        let dir = &session.files.dir;
        let op = "recording the restored checkpoint in the owner marker of";
        let mut owner = Owner::read(dir).ok_or_else(|| {
            IoError::new(op, dir, std::io::Error::other("the marker is unreadable"))
        })?;
        let checkpoints = self.cfg.layout.checkpoints();
        owner.uses.retain(|u| !u.starts_with(&checkpoints));
        owner.uses.push(ready.dir.clone());
        owner.write(dir).map_err(|e| IoError::new(op, dir, e))
    }

    /// A fork's starting point: the checkpoint as its ready state and where its pointer was;
    /// and its machine in `req`.
    pub(super) fn fork_source(
        &self,
        name: &str,
        req: &mut StartRequest,
        backend: &dyn Backend,
    ) -> Result<(ReadyState, CheckpointInfo), SessionError> {
        let (info, ready) = self.usable(name, backend)?;
        for (field, given, theirs) in [
            ("width", req.width, info.width),
            ("height", req.height, info.height),
            ("memory_mb", req.memory_mb, info.memory_mb),
        ] {
            if given.is_some_and(|g| g != theirs) {
                return Err(SessionError::Incompatible {
                    name: name.to_string(),
                    why: format!(
                        "{field} is {theirs} in the checkpoint; leave it out or give {theirs}"
                    ),
                });
            }
        }
        (req.width, req.height, req.memory_mb) =
            (Some(info.width), Some(info.height), Some(info.memory_mb));
        req.image = Some(info.image.clone());
        Ok((ready, info))
    }

    /// How a new session of `spec`'s machine starts: from the shared-memory template when
    /// there is one (its RAM mapped copy-on-write), else from the private ready state, else by
    /// booting. The third item is the private ready state a template was made from (its disk
    /// is below the template's: the session runs on it too).
    pub(super) fn resume_plan(
        &self,
        image: &GuestImage,
        spec: VmSpec,
        backend: &dyn crate::backend::Backend,
    ) -> (VmSpec, Option<ReadyState>, Option<ReadyState>) {
        let qemu = backend.qemu_version();
        // A template's RAM file must be on QEMU's host.
        let shared = self.cfg.shared_memory && backend.files_on_host();
        let template = ReadyState::find_template(image, qemu, &spec);
        match template.filter(|_| shared) {
            Some(t) => {
                let beneath = ReadyState::find(image, qemu, &spec);
                (spec.with_template(t.ram(), false), Some(t), beneath)
            }
            None => {
                let ready = ReadyState::find(image, qemu, &spec);
                (spec, ready, None)
            }
        }
    }

    pub async fn checkpoint_list(&self) -> Vec<CheckpointInfo> {
        let started = Instant::now();
        let list = checkpoint::list(&self.cfg.layout);
        let v = json!({ "checkpoints": list.len() });
        self.record_server("checkpoint_list", json!({}), Ok(&v), started);
        list
    }

    pub async fn checkpoint_delete(&self, name: &str) -> Result<u64, SessionError> {
        let started = Instant::now();
        let layout = self.cfg.layout.clone();
        let owned = name.to_string();
        // Exclusive: no fork is between choosing this checkpoint and naming it in its marker.
        let result = tokio::task::spawn_blocking(move || {
            let _lock = crate::storage::CacheLock::exclusive(&layout)?;
            checkpoint::delete(&layout, &owned)
        })
        .await
        .map_err(|source| SessionError::Task {
            what: "the checkpoint's removal",
            source,
        })
        .and_then(|r| r);
        let v = result.as_ref().map(|b| json!({ "bytes_freed": b }));
        self.record_server(
            "checkpoint_delete",
            json!({ "name": name }),
            v.as_ref().map_err(|e| *e),
            started,
        );
        result
    }
}
