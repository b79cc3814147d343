//! The filesystem half of a scan: session runtime dirs, build work, guest images and ready
//! states in the cache, review ledgers and exports. Pure reads.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Candidate, Current, Kind, Request, Scan};
use crate::storage::owner::{Liveness, Owner, ProcessRef, PROCESS_FILE};
use crate::storage::usage::disk_bytes;
use crate::storage::Layout;

pub(super) fn filesystem(layout: &Layout, current: &Current, req: &Request) -> Scan {
    let mut scan = Scan::default();
    instances(layout, &mut scan);
    sessions(layout, req, &mut scan);
    super::shm::leftovers(layout, req, &mut scan);
    for dir in entries(&layout.work()) {
        build_work(&dir, req, &mut scan);
    }
    // Before images: what kept checkpoints sit on is in use.
    super::checkpoints::scan(layout, current, req, &mut scan);
    super::checkpoints::keep_other_roots(layout, &mut scan);
    images(layout, current, req, &mut scan);
    ledgers(layout, req, &mut scan);
    exports(layout, req, &mut scan);
    scan
}

pub(super) fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

pub(super) fn name(p: &Path) -> &str {
    p.file_name().and_then(|n| n.to_str()).unwrap_or("")
}

pub(super) fn candidate(
    kind: Kind,
    path: &Path,
    bytes: u64,
    why: String,
    owner: Option<Owner>,
) -> Candidate {
    Candidate {
        kind,
        session: None,
        path: Some(path.to_path_buf()),
        container: None,
        process: None,
        image: None,
        tags: Vec::new(),
        bytes,
        why,
        owner,
    }
}

/// The marker of `dir` when its owner is gone; records why anything else is left alone.
pub(super) fn dead_owner(dir: &Path, scan: &mut Scan) -> Option<(Owner, String)> {
    let Some(owner) = Owner::read(dir) else {
        scan.skip(dir.display().to_string(), "no deskvm owner marker");
        return None;
    };
    match owner.liveness() {
        Liveness::Dead(why) => Some((owner, why)),
        Liveness::Unknown(why) => {
            scan.skip(dir.display().to_string(), why);
            None
        }
        Liveness::Alive => {
            scan.in_use.extend(owner.uses.iter().cloned());
            scan.images_in_use.extend(owner.images.iter().cloned());
            None
        }
    }
}

/// Running servers (of any version, with any runtime dir) and what they run from. A record
/// that cannot be judged from here keeps what it names too.
fn instances(layout: &Layout, scan: &mut Scan) {
    for e in std::fs::read_dir(layout.instances())
        .into_iter()
        .flatten()
        .flatten()
    {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let Some(owner) = Owner::load(&path) else {
            continue;
        };
        if matches!(owner.liveness(), Liveness::Dead(_)) {
            scan.stale_instances.push(path);
        } else {
            scan.in_use.extend(owner.uses);
            scan.images_in_use.extend(owner.images);
        }
    }
}

fn sessions(layout: &Layout, req: &Request, scan: &mut Scan) {
    for dir in entries(&layout.sessions()) {
        let bytes = disk_bytes(&dir);
        if name(&dir).starts_with("ready-") {
            scan.usage.build_work.add(bytes);
        } else {
            scan.usage.sessions.add(bytes);
        }
        let Some((owner, why)) = dead_owner(&dir, scan) else {
            continue;
        };
        let building = owner.kind == "ready_build" || name(&dir).starts_with("ready-");
        let kind = if building {
            Kind::BuildWork
        } else {
            Kind::OrphanSession
        };
        if !req.wants(kind) {
            continue;
        }
        let process = std::fs::read(dir.join(PROCESS_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice::<ProcessRef>(&b).ok())
            .filter(ProcessRef::alive);
        let mut c = candidate(kind, &dir, bytes, why, Some(owner.clone()));
        c.session = (!building).then(|| owner.session.unwrap_or_else(|| name(&dir).into()));
        c.process = process;
        scan.candidates.push(c);
    }
}

pub(super) fn build_work(dir: &Path, req: &Request, scan: &mut Scan) {
    let bytes = disk_bytes(dir);
    scan.usage.build_work.add(bytes);
    match Owner::read(dir).map(|o| (o.liveness(), o)) {
        None => scan.skip(dir.display().to_string(), "no deskvm owner marker"),
        Some((Liveness::Alive, o)) => scan.skip(
            dir.display().to_string(),
            format!(
                "a build in progress (instance {}, pid {})",
                o.instance, o.pid
            ),
        ),
        Some((Liveness::Unknown(why), _)) => scan.skip(dir.display().to_string(), why),
        Some((Liveness::Dead(why), o)) if req.wants(Kind::BuildWork) => {
            let why = format!("half-built: {why}");
            scan.candidates
                .push(candidate(Kind::BuildWork, dir, bytes, why, Some(o)));
        }
        Some(_) => {}
    }
}

const IN_USE: &str = "a live deskvm server or session runs from it";

pub(super) fn is_work(p: &Path) -> bool {
    let n = name(p);
    n.ends_with(".partial") || n.ends_with(".recipe")
}

fn images(layout: &Layout, current: &Current, req: &Request, scan: &mut Scan) {
    for dir in entries(&layout.images()) {
        if is_work(&dir) {
            build_work(&dir, req, scan);
            continue;
        }
        let mut rest = disk_bytes(&dir);
        let mut readies = Vec::new();
        let mut building = false;
        for child in entries(&dir)
            .into_iter()
            .filter(|c| name(c).starts_with("ready-"))
        {
            let bytes = disk_bytes(&child);
            rest = rest.saturating_sub(bytes);
            if is_work(&child) {
                let alive = Owner::read(&child).is_some_and(|o| o.liveness() == Liveness::Alive);
                building |= alive;
                build_work(&child, req, scan);
            } else {
                scan.usage.ready_states.add(bytes);
                readies.push((child, bytes));
            }
        }
        scan.usage.guest_images.add(rest);
        let owner = Owner::read(&dir);
        if !current.image_dirs.contains(&dir) {
            let newer = newer_current(current, &dir);
            if owner.is_none() {
                scan.skip(dir.display().to_string(), "no deskvm owner marker");
            } else if let Err(why) = newer {
                scan.skip(dir.display().to_string(), why);
            } else if scan.in_use.contains(&dir) {
                scan.skip(dir.display().to_string(), IN_USE);
            } else if building {
                scan.skip(
                    dir.display().to_string(),
                    "a ready state is being built in it",
                );
            } else if req.wants(Kind::GuestImage) {
                let built = name(&dir).rsplit('-').next().unwrap_or("?");
                let now = current_of_name(current, &dir)
                    .map(|d| name(d).to_string())
                    .unwrap_or_default();
                let why = format!("built from {built}; superseded by {now}");
                let bytes = rest + readies.iter().map(|(_, b)| b).sum::<u64>();
                // The image's own half-built children go with it: drop them from the list.
                scan.candidates
                    .retain(|c| !c.path.as_ref().is_some_and(|p| p.starts_with(&dir)));
                scan.candidates
                    .push(candidate(Kind::GuestImage, &dir, bytes, why, owner));
            }
            continue;
        }
        for (ready, bytes) in readies {
            if current.ready_dirs.contains(&ready) || !req.wants(Kind::ReadyState) {
                continue;
            }
            if scan.in_use.contains(&ready) {
                scan.skip(ready.display().to_string(), IN_USE);
                continue;
            }
            let Some(owner) = Owner::read(&ready) else {
                scan.skip(ready.display().to_string(), "no deskvm owner marker");
                continue;
            };
            let qemu = std::fs::read(ready.join("meta.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|m| m["qemu_version"].as_str().map(str::to_string))
                .unwrap_or_else(|| "an unknown QEMU build".into());
            let same_build = current.qemu_builds.contains(&qemu);
            let why = if same_build {
                format!("saved by {qemu} under another machine configuration or format")
            } else if current.builds_known {
                format!(
                    "saved by {qemu}; sessions now run on {}",
                    current.qemu_builds.join(" and ")
                )
            } else {
                scan.skip(
                    ready.display().to_string(),
                    format!("saved by {qemu}: cannot tell whether it still runs (a QEMU build could not be read; is the Docker engine up?)"),
                );
                continue;
            };
            scan.candidates
                .push(candidate(Kind::ReadyState, &ready, bytes, why, Some(owner)));
        }
    }
}

/// When a cache dir was made: its marker's time, else its mtime (unix seconds).
fn created(dir: &Path) -> u64 {
    Owner::read(dir)
        .map(|o| o.created_at)
        .filter(|c| *c > 0)
        .or_else(|| {
            let t = std::fs::metadata(dir).and_then(|m| m.modified()).ok()?;
            Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs())
        })
        .unwrap_or(0)
}

/// An image is superseded only by a built image of the same name from this deskvm's recipe
/// that is at least as new (an older deskvm never removes a newer one's image).
/// The current image of the name `dir` is an image of (or of the name it was renamed to).
fn current_of_name<'a>(current: &'a Current, dir: &Path) -> Option<&'a PathBuf> {
    let n = name(dir);
    let base = n.rsplit_once('-').map_or(n, |(b, _)| b);
    let base = current
        .renamed
        .iter()
        .find(|(old, _)| old == base)
        .map_or(base, |(_, new)| new.as_str());
    current
        .image_dirs
        .iter()
        .find(|d| name(d).rsplit_once('-').is_some_and(|(b, _)| b == base))
}

fn newer_current(current: &Current, dir: &Path) -> Result<(), String> {
    let cur = current_of_name(current, dir);
    match cur {
        Some(c) if c.join("base.qcow2").exists() && created(c) >= created(dir) => Ok(()),
        Some(c) if c.join("base.qcow2").exists() => Err(format!(
            "newer than this deskvm's image {} (made by a newer deskvm?)",
            name(c)
        )),
        _ => Err("this deskvm's own image of that name is not built; kept".into()),
    }
}

fn age(dir: &Path) -> Duration {
    let file = dir.join("timeline.jsonl");
    std::fs::metadata(&file)
        .or_else(|_| std::fs::metadata(dir))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .unwrap_or_default()
}

fn ledgers(layout: &Layout, req: &Request, scan: &mut Scan) {
    for dir in entries(&layout.reviews()) {
        let bytes = disk_bytes(&dir);
        scan.usage.ledgers.add(bytes);
        if !req.wants(Kind::Ledger) {
            continue;
        }
        let Some(owner) = Owner::read(&dir) else {
            scan.skip(dir.display().to_string(), "no deskvm owner marker");
            continue;
        };
        let meta: serde_json::Value = std::fs::read(dir.join("session.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let state = meta["state"].as_str().unwrap_or("unknown").to_string();
        let why_ended = match owner.liveness() {
            // A live server's ledgers go only once their session stopped (a failed session
            // is still listed by its server; the server's own ledger runs with it).
            Liveness::Alive if state != "stopped" => continue,
            Liveness::Unknown(why) => {
                scan.skip(dir.display().to_string(), why);
                continue;
            }
            Liveness::Dead(_) if state == "running" => "ended when its server died".to_string(),
            _ => format!("session {state}"),
        };
        let limit = req.older_than.unwrap_or_else(|| {
            Duration::from_secs(meta["retention_days"].as_u64().unwrap_or(14) * 86_400)
        });
        let age = age(&dir);
        if age >= limit {
            let why = format!(
                "{why_ended}; last written {} ago, kept for {}",
                short(age),
                short(limit)
            );
            let mut c = candidate(Kind::Ledger, &dir, bytes, why, Some(owner));
            c.session = meta["session_id"].as_str().map(str::to_string);
            scan.candidates.push(c);
        }
    }
}

/// A duration in its largest whole unit: "3d", "5h", "12m", "40s".
pub fn short(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        86_400.. => format!("{}d", s / 86_400),
        3_600.. => format!("{}h", s / 3_600),
        60.. => format!("{}m", s / 60),
        _ => format!("{s}s"),
    }
}

/// An exported bundle is deskvm's when its `review.json` says so (bundles carry no owner
/// marker: they are made to be copied and shared).
pub fn is_bundle(dir: &Path) -> bool {
    std::fs::read(dir.join("review.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| {
            v["format"]
                .as_str()
                .map(|f| f.starts_with("deskvm-review/"))
        })
        .unwrap_or(false)
}

fn exports(layout: &Layout, req: &Request, scan: &mut Scan) {
    for dir in entries(&layout.exports()) {
        let bytes = disk_bytes(&dir);
        scan.usage.exports.add(bytes);
        if !req.wants(Kind::Export) || !req.exports.iter().any(|n| n == name(&dir)) {
            continue;
        }
        if is_bundle(&dir) {
            let why = "asked for by name".to_string();
            scan.candidates
                .push(candidate(Kind::Export, &dir, bytes, why, None));
        } else {
            scan.skip(dir.display().to_string(), "not a deskvm review bundle");
        }
    }
}
