//! Screendump dirs on tmpfs (`/dev/shm/deskvm-<uid>/<session>`) that outlived their session.

use super::scan::{candidate, dead_owner, entries, name};
use super::{Kind, Request, Scan};
use crate::storage::usage::disk_bytes;
use crate::storage::Layout;

/// Screendump dirs on tmpfs whose session's runtime dir is not here (removed by hand, or under
/// another runtime root) and whose server is gone. The others go with their runtime dir.
pub(super) fn leftovers(layout: &Layout, req: &Request, scan: &mut Scan) {
    let Some(root) = crate::vm::spec::shm_root() else {
        return;
    };
    if !req.wants(Kind::OrphanSession) {
        return;
    }
    for dir in entries(root) {
        if layout.sessions().join(name(&dir)).exists() {
            continue;
        }
        let Some((owner, why)) = dead_owner(&dir, scan) else {
            continue;
        };
        let mut c = candidate(
            Kind::OrphanSession,
            &dir,
            disk_bytes(&dir),
            format!("screendumps of a session: {why}"),
            Some(owner.clone()),
        );
        c.session = Some(owner.session.unwrap_or_else(|| name(&dir).into()));
        scan.candidates.push(c);
    }
}
