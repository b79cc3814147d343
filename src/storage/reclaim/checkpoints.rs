//! Checkpoints in a scan: candidates only when nothing can load them and nothing depends on
//! them; everything a kept one needs is marked in use before images are judged.

use std::collections::HashSet;
use std::path::PathBuf;

use super::scan::{build_work, candidate, entries, is_work};
use super::{Current, Kind, Request, Scan};
use crate::storage::owner::Owner;
use crate::storage::usage::disk_bytes;
use crate::storage::Layout;

/// A checkpoint as scanned: its directory, metadata, marker and size.
struct Saved {
    dir: PathBuf,
    qemu: String,
    machine: u64,
    parent: Option<String>,
    owner: Option<Owner>,
    bytes: u64,
}

/// Checkpoints are what people saved on purpose: kept, unless no QEMU build sessions run now
/// can load one and nothing depends on it (a running session, a kept checkpoint above it).
/// What a kept one sits on (its ready state, guest image, lower checkpoints) is in use.
pub(super) fn scan(layout: &Layout, current: &Current, req: &Request, scan: &mut Scan) {
    let mut saved = Vec::new();
    for dir in entries(&layout.checkpoints()) {
        // Being written (checkpoint.json comes last), or left half-written by a dead writer.
        if is_work(&dir) || !dir.join("checkpoint.json").exists() {
            build_work(&dir, req, scan);
            continue;
        }
        let bytes = disk_bytes(&dir);
        scan.usage.checkpoints.add(bytes);
        let Some(meta) = std::fs::read(dir.join("checkpoint.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        else {
            scan.skip(dir.display().to_string(), "unreadable checkpoint.json");
            continue;
        };
        saved.push(Saved {
            qemu: meta["qemu_version"].as_str().unwrap_or("").to_string(),
            machine: meta["machine"].as_u64().unwrap_or(1),
            parent: meta["parent"].as_str().map(str::to_string),
            owner: Owner::read(&dir),
            dir,
            bytes,
        });
    }
    // Of an older virtual hardware generation, no server of this version loads it.
    let loadable = |s: &Saved| {
        s.machine == u64::from(crate::vm::spec::MACHINE_GENERATION)
            && (!current.builds_known || current.qemu_builds.contains(&s.qemu))
    };
    let mut keep: HashSet<PathBuf> = saved
        .iter()
        .filter(|s| loadable(s) || scan.in_use.contains(&s.dir))
        .map(|s| s.dir.clone())
        .collect();
    // A kept checkpoint keeps every one below it.
    loop {
        let below: Vec<PathBuf> = saved
            .iter()
            .filter(|s| keep.contains(&s.dir))
            .filter_map(|s| s.parent.as_ref().map(|p| layout.checkpoints().join(p)))
            .filter(|p| !keep.contains(p))
            .collect();
        if below.is_empty() {
            break;
        }
        keep.extend(below);
    }
    for s in saved {
        if keep.contains(&s.dir) {
            if !loadable(&s) {
                scan.skip(
                    s.dir.display().to_string(),
                    format!(
                        "saved by {}, but a running session or kept checkpoint depends on it",
                        s.qemu
                    ),
                );
            }
            scan.in_use.extend(s.owner.into_iter().flat_map(|o| o.uses));
            scan.in_use.insert(s.dir);
            continue;
        }
        if !req.wants(Kind::Checkpoint) {
            continue;
        }
        let Some(owner) = s.owner else {
            scan.skip(s.dir.display().to_string(), "no deskvm owner marker");
            continue;
        };
        let generation = crate::vm::spec::MACHINE_GENERATION;
        let why = if s.machine != u64::from(generation) {
            format!(
                "saved on virtual hardware generation {}; this deskvm runs generation {generation} and cannot load it",
                s.machine
            )
        } else {
            format!(
                "saved by {}; sessions now run on {} and cannot load it",
                s.qemu,
                current.qemu_builds.join(" and ")
            )
        };
        scan.candidates.push(candidate(
            Kind::Checkpoint,
            &s.dir,
            s.bytes,
            why,
            Some(owner),
        ));
    }
}

/// Other state roots' checkpoints on this image store are not this reclaim's to judge: all
/// they sit on (ready states, guest images) stays, whatever their QEMU build.
pub(super) fn keep_other_roots(layout: &Layout, scan: &mut Scan) {
    for root in crate::storage::roots::others(layout) {
        for dir in entries(&root.join("checkpoints")) {
            scan.in_use
                .extend(Owner::read(&dir).into_iter().flat_map(|o| o.uses));
        }
    }
}
