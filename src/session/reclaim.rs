//! The session's side of reclaim: what this deskvm runs from (the current guest images, ready
//! states and runtime image, never candidates), a request checked before anything is removed,
//! and the `reclaim` tool call, recorded like every other.
//!
//! The scan and removal themselves are `storage::reclaim`; this module knows what they cannot
//! (which images and machines the sessions start from, which exports a caller sees). Both the
//! tool (`mcp::reclaim`) and the CLI's report (`deskvm reclaim`, run with no server) come here.

use std::time::{Duration, Instant};

use bollard::Docker;
use serde_json::json;

use super::{check_name, machine_spec, Caller, SessionError, SessionManager};
use crate::backend::docker;
use crate::backend::local::{qemu_version, QEMU};
use crate::guest_image::ready::ReadyState;
use crate::guest_image::GuestImage;
use crate::storage::reclaim::{self, Current, Kind, Report, Request};
use crate::storage::{IoError, Layout};
use crate::vm::spec::Accel;

impl SessionManager {
    /// Reports (or with `apply` removes) what deskvm holds that nothing needs. This server's
    /// own sessions are live, so never candidates.
    pub async fn reclaim(
        &self,
        apply: bool,
        kinds: Option<Vec<Kind>>,
        include: Vec<String>,
        older_than: Option<String>,
    ) -> Result<Report, SessionError> {
        let started = Instant::now();
        let mode = if apply { "apply" } else { "report" };
        let args =
            json!({ "mode": mode, "kinds": kinds, "include": include, "older_than": older_than });
        let result = async {
            let req = Request {
                apply,
                kinds,
                exports: include,
                older_than: older_than.as_deref().map(parse_older_than).transpose()?,
            };
            run(self.layout(), &req).await
        }
        .await;
        // The ledger keeps what was removed or failed; a report's candidates only as counts.
        let summary = result.as_ref().map(|r| {
            json!({
                "mode": r.mode,
                "candidates": r.candidates.len(),
                "candidate_bytes": r.candidate_bytes,
                "removed": r.removed,
                "failed": r.failed,
                "bytes_freed": r.bytes_freed,
                "took_ms": r.took_ms,
            })
        });
        self.record_server("reclaim", args, summary.as_ref().map_err(|e| *e), started);
        result
    }
}

/// Runs a checked request against this host's storage and engine.
pub async fn run(layout: &Layout, req: &Request) -> Result<Report, SessionError> {
    check_exports(layout, &req.exports)?;
    let docker = docker::connect().await.ok();
    let cur = current(layout, docker.as_ref()).await;
    reclaim::run(layout, &cur, docker.as_ref(), req)
        .await
        .map_err(|e| IoError::new("reclaiming in", &layout.cache, e).into())
}

/// The images, ready states and QEMU builds this deskvm runs from: never candidates.
pub async fn current(layout: &Layout, docker: Option<&Docker>) -> Current {
    let mut cur = Current {
        runtime_tag: docker::runtime_image_tag(),
        builds_known: true,
        ..Default::default()
    };
    let local = std::env::var_os("DESKVM_QEMU").unwrap_or_else(|| QEMU.into());
    match qemu_version(std::path::Path::new(&local)).await {
        Ok(v) => cur.qemu_builds.push(v),
        Err(_) => cur.builds_known = false,
    }
    match docker {
        // No runtime image: no Docker session can run any ready state, so none is needed.
        Some(d) => {
            if let Some(v) = docker::image_qemu_version(d, &cur.runtime_tag).await {
                if !cur.qemu_builds.contains(&v) {
                    cur.qemu_builds.push(v);
                }
            }
        }
        None => cur.builds_known = false,
    }
    // Each name's current image (a built-in recipe's at its hash now, any other's newest):
    // every other build of a name is superseded.
    cur.renamed = crate::guest_image::ALIASES
        .iter()
        .map(|(old, new)| (old.to_string(), new.to_string()))
        .collect();
    for image in GuestImage::available(layout) {
        current_of(&image, &mut cur);
        cur.image_dirs.push(image.dir);
    }
    cur
}

/// One guest image's ready states and templates (every QEMU build, both accelerators) and its
/// guest images on the engines.
fn current_of(image: &GuestImage, cur: &mut Current) {
    for build in &cur.qemu_builds {
        for accel in [Accel::Kvm, Accel::Tcg] {
            let spec = machine_spec(image, accel, None, false);
            cur.ready_dirs
                .push(ReadyState::path_for(image, build, &spec).dir);
            cur.ready_dirs
                .push(ReadyState::template_path(image, build, &spec).dir);
        }
    }
    for build in &cur.qemu_builds {
        let dir = image.dir.file_name().unwrap_or_default().to_string_lossy();
        cur.guest_tags.push(docker::guest::tag_for(&dir, build));
    }
}

/// `older_than`: "90s", "30m", "12h", "7d" (any humantime duration).
pub fn parse_older_than(v: &str) -> Result<Duration, SessionError> {
    humantime::parse_duration(v.trim()).map_err(|_| SessionError::OutOfRange {
        field: "older_than",
        value: v.chars().take(40).collect(),
        valid: "a duration such as 90s, 30m, 12h or 7d".into(),
    })
}

/// Export names must name existing review bundles the caller sees: checked before anything is
/// removed.
pub fn check_exports(layout: &Layout, names: &[String]) -> Result<(), SessionError> {
    for n in names {
        check_name("include", n)?;
        if !Caller::current().sees_bundle(&layout.exports(), n) {
            let mut known: Vec<String> = std::fs::read_dir(layout.exports())
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect();
            known.sort();
            return Err(SessionError::InvalidName {
                field: "include",
                value: n.clone(),
                why: if known.is_empty() {
                    "no export by that name; there are no exports".into()
                } else {
                    format!("no export by that name; exports: {}", known.join(", "))
                },
            });
        }
    }
    Ok(())
}

/// Adopts the current guest image and ready state when they predate owner markers (they are
/// in deskvm's own cache under deskvm's names), so a later recipe can supersede them. A marker
/// that cannot be written is logged, not fatal: the image still works, it only stays unadopted
/// (reclaim never removes what it cannot tell is deskvm's).
pub fn adopt(image: &GuestImage, ready: Option<&ReadyState>) {
    use crate::storage::owner::{Owner, MARKER};
    for (dir, kind) in [
        (Some(&image.dir), "guest_image"),
        (ready.map(|r| &r.dir), "ready_state"),
    ] {
        if let Some(dir) = dir.filter(|d| !d.join(MARKER).exists()) {
            if let Err(e) = Owner::me(kind, None).write(dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "could not adopt {kind}: no owner marker written");
            }
        }
    }
}
