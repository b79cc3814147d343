//! Removing candidates, one at a time, each checked afterwards: an item is "removed" only when
//! its process, container, directory or image is really gone, and the bytes freed are measured
//! (before minus what is left), never taken from the plan.

use std::path::Path;
use std::time::{Duration, Instant};

use bollard::query_parameters::{RemoveContainerOptionsBuilder, RemoveImageOptionsBuilder};
use bollard::Docker;

use super::engine::{container_gone, image_gone};
use super::{Candidate, Failed, Kind, Removed};
use crate::storage::owner::{Liveness, Owner, ProcessRef};
use crate::storage::usage::{disk_bytes, exists};
use crate::vm::spec::RuntimeFiles;

pub(super) async fn all(
    docker: Option<&Docker>,
    items: &[Candidate],
) -> (Vec<Removed>, Vec<Failed>) {
    let (mut removed, mut failed) = (Vec::new(), Vec::new());
    for item in items {
        let before = match &item.path {
            Some(p) => disk_bytes(p),
            None => item.bytes,
        };
        let errors = one(docker, item).await;
        let remaining = match (&item.path, &item.image) {
            (Some(p), _) => disk_bytes(p),
            (None, Some(id)) => match docker {
                Some(d) if image_gone(d, id).await == Ok(true) => 0,
                _ => item.bytes,
            },
            _ => 0,
        };
        let bytes_freed = before.saturating_sub(remaining);
        let item = item.clone();
        if errors.is_empty() {
            tracing::info!(kind = item.kind.as_str(), path = ?item.path, container = ?item.container, image = ?item.image, bytes_freed, "reclaimed");
            removed.push(Removed { item, bytes_freed });
        } else {
            let error = errors.join("; ");
            tracing::warn!(kind = item.kind.as_str(), path = ?item.path, %error, "could not reclaim");
            failed.push(Failed {
                item,
                error,
                bytes_freed,
                bytes_remaining: remaining,
            });
        }
    }
    (removed, failed)
}

/// Removes every part of `item`; returns what went wrong (empty: all of it is gone).
async fn one(docker: Option<&Docker>, item: &Candidate) -> Vec<String> {
    let mut errors = Vec::new();
    // Nothing may have taken the path over since the scan (a new build reusing its name), and
    // what was an orphan must still be one.
    if let (Some(path), Some(owner)) = (&item.path, &item.owner) {
        let orphan = matches!(item.kind, Kind::OrphanSession | Kind::BuildWork);
        if Owner::read(path).as_ref() != Some(owner)
            || (orphan && owner.liveness() == Liveness::Alive)
        {
            return vec!["its owner changed since the scan; left alone".into()];
        }
    }
    if let Some(p) = &item.process {
        if let Err(e) = kill(p).await {
            errors.push(e);
        }
    }
    if let Some(name) = &item.container {
        match docker {
            None => errors.push(format!(
                "container {name}: the Docker engine is not reachable"
            )),
            Some(d) => {
                let opts = RemoveContainerOptionsBuilder::new()
                    .force(true)
                    .v(true)
                    .build();
                let removed = d.remove_container(name, Some(opts)).await;
                match container_gone(d, name).await {
                    Ok(true) => {}
                    Ok(false) => errors.push(format!(
                        "container {name} is still there{}",
                        removed.err().map(|e| format!(": {e}")).unwrap_or_default()
                    )),
                    Err(e) => errors.push(format!("container {name}: {e}")),
                }
            }
        }
    }
    // A session's screendumps live in a companion dir on tmpfs; it goes with the session.
    let companion = (item.kind == Kind::OrphanSession)
        .then_some(item.path.as_ref())
        .flatten()
        .and_then(|dir| RuntimeFiles { dir: dir.clone() }.shm_dir())
        .filter(|shm| Some(shm) != item.path.as_ref() && exists(shm));
    for path in companion.iter().chain(item.path.as_ref()) {
        let p = path.clone();
        let result = tokio::task::spawn_blocking(move || remove_tree(&p))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        if let Err(e) = result {
            errors.push(e);
        } else if exists(path) {
            errors.push(format!("{} is still there", path.display()));
        }
    }
    if let Some(id) = &item.image {
        match docker {
            None => errors.push(format!("image {id}: the Docker engine is not reachable")),
            Some(d) => {
                let opts = RemoveImageOptionsBuilder::new().force(false).build();
                let removed = d.remove_image(id, Some(opts), None).await;
                match image_gone(d, id).await {
                    Ok(true) => {}
                    Ok(false) => errors.push(format!(
                        "image {id} is still there{}",
                        removed.err().map(|e| format!(": {e}")).unwrap_or_default()
                    )),
                    Err(e) => errors.push(format!("image {id}: {e}")),
                }
            }
        }
    }
    errors
}

async fn kill(p: &ProcessRef) -> Result<(), String> {
    if !p.alive() {
        return Ok(());
    }
    // SAFETY: kill(2) on a pid just checked to be the very process recorded (same start time).
    if unsafe { libc::kill(p.pid as libc::pid_t, libc::SIGKILL) } != 0 {
        let e = std::io::Error::last_os_error();
        if p.alive() {
            return Err(format!("could not kill QEMU (pid {}): {e}", p.pid));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while p.alive() {
        if Instant::now() > deadline {
            return Err(format!("QEMU (pid {}) still runs 5 s after SIGKILL", p.pid));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Removes a tree, going on past failures, and names the first thing it could not remove.
/// It never crosses into another filesystem (a build's leftover `proc` mount, a bind mount).
pub fn remove_tree(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let mut first = None;
    if let Ok(m) = std::fs::symlink_metadata(path) {
        rm(path, m.dev(), &mut first);
    }
    first.map_or(Ok(()), Err)
}

fn rm(path: &Path, dev: u64, first: &mut Option<String>) {
    use std::os::unix::fs::MetadataExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => return note(first, path, e),
    };
    if meta.dev() != dev {
        let e = std::io::Error::other("another filesystem is mounted there; unmount it first");
        return note(first, path, e);
    }
    if meta.is_dir() {
        match std::fs::read_dir(path) {
            Ok(entries) => {
                for entry in entries.flatten() {
                    rm(&entry.path(), dev, first);
                }
            }
            Err(e) => return note(first, path, e),
        }
        if let Err(e) = std::fs::remove_dir(path) {
            note(first, path, e);
        }
    } else if let Err(e) = std::fs::remove_file(path) {
        note(first, path, e);
    }
}

fn note(first: &mut Option<String>, path: &Path, e: std::io::Error) {
    if first.is_none() {
        *first = Some(format!("could not remove {}: {e}", path.display()));
    }
}
