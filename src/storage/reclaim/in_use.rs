//! What live deskvm processes run from, for removals outside reclaim (`image rm`).

use std::path::PathBuf;

use crate::storage::owner::Owner;
use crate::storage::Layout;

/// What live deskvm processes run from (servers' records, this runtime dir's sessions), and
/// who: `image rm` refuses to remove any of it.
pub fn in_use(layout: &Layout) -> Vec<(PathBuf, String)> {
    use crate::storage::owner::Liveness;
    let mut found = Vec::new();
    let records = std::fs::read_dir(layout.instances())
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter_map(|p| Owner::load(&p));
    let sessions = super::scan::entries(&layout.sessions())
        .into_iter()
        .filter_map(|d| Owner::read(&d));
    for owner in records.chain(sessions) {
        if matches!(owner.liveness(), Liveness::Dead(_)) {
            continue;
        }
        let who = match &owner.session {
            Some(s) => format!("session {s} of pid {}", owner.pid),
            None => format!("{} pid {}", owner.kind, owner.pid),
        };
        found.extend(owner.uses.iter().map(|u| (u.clone(), who.clone())));
    }
    found
}
