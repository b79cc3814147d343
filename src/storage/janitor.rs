//! The startup janitor: every server, as it starts, removes what dead deskvm processes left
//! behind (their sessions' runtime dirs, QEMU processes and containers; half-built images),
//! never anything of a live instance, and leaves an account of it for `reclaim` to show.

use bollard::Docker;
use serde_json::json;

use super::owner::instance_id;
use super::reclaim::{self, Current, Kind, Report, Request};
use super::Layout;

/// Kinds the janitor removes by itself: nothing anyone could still want.
pub const KINDS: &[Kind] = &[Kind::OrphanSession, Kind::BuildWork];

pub async fn run(layout: &Layout, docker: Option<&Docker>) -> std::io::Result<Report> {
    let req = Request {
        apply: true,
        kinds: Some(KINDS.to_vec()),
        ..Default::default()
    };
    let report = reclaim::run(layout, &Current::default(), docker, &req).await?;
    let record = json!({
        "at": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        "instance": instance_id(),
        "pid": std::process::id(),
        "docker": docker.is_some(),
        "removed": report.removed,
        "failed": report.failed,
        "bytes_freed": report.bytes_freed,
        "took_ms": report.took_ms,
    });
    let path = layout.janitor_record();
    let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
    let written = serde_json::to_vec_pretty(&record)
        .map_err(std::io::Error::other)
        .and_then(|b| std::fs::write(&tmp, b))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        tracing::warn!(error = %e, path = %path.display(), "could not record the janitor's run");
    }
    for r in report.removed.iter().flatten() {
        tracing::info!(kind = r.item.kind.as_str(), session = ?r.item.session, path = ?r.item.path, container = ?r.item.container, bytes = r.bytes_freed, "janitor: removed what a deskvm process that is gone left behind");
    }
    for f in report.failed.iter().flatten() {
        tracing::warn!(kind = f.item.kind.as_str(), path = ?f.item.path, error = %f.error, "janitor: could not remove");
    }
    Ok(report)
}

/// The same rule on an engine elsewhere (`--engine`): session containers whose deskvm process
/// on this machine is gone. Containers of other machines' deskvm are never judged here.
pub async fn run_on_engine(docker: &Docker, engine: &str) {
    let req = Request {
        apply: true,
        kinds: Some(vec![Kind::OrphanSession]),
        ..Default::default()
    };
    let report = reclaim::run_engine(docker, &req).await;
    for r in report.removed.iter().flatten() {
        tracing::info!(engine, container = ?r.item.container, "janitor: removed a container a deskvm process that is gone left behind");
    }
    for f in report.failed.iter().flatten() {
        tracing::warn!(engine, container = ?f.item.container, error = %f.error, "janitor: could not remove");
    }
}
