//! `reclaim` for this binary: what it runs from (the current guest images, ready states and
//! runtime image), the checks on a request, and the `deskvm reclaim` command, which works with
//! no server running (it judges every owner itself).

use std::time::Duration;

use anyhow::Result;
use bollard::Docker;

use crate::backend::docker;
use crate::backend::local::{qemu_version, QEMU};
use crate::image::ready::ReadyState;
use crate::image::{GuestImage, IMAGES};
use crate::session::{check_name, machine_spec, SessionError, DEFAULT_MEMORY_MB};
use crate::storage::reclaim::{self, Current, Kind, Report, Request};
use crate::storage::usage::human;
use crate::storage::IoError;
use crate::storage::Layout;
use crate::vm::spec::Accel;

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
    for name in IMAGES {
        let image = GuestImage {
            name: name.to_string(),
            dir: GuestImage::dir_for(layout, name),
        };
        for build in &cur.qemu_builds {
            for accel in [Accel::Kvm, Accel::Tcg] {
                let spec = machine_spec(&image, accel, DEFAULT_MEMORY_MB, false);
                cur.ready_dirs
                    .push(ReadyState::path_for(&image, build, &spec).dir);
                cur.ready_dirs
                    .push(ReadyState::template_path(&image, build, &spec).dir);
            }
        }
        for build in &cur.qemu_builds {
            let dir = image.dir.file_name().unwrap_or_default().to_string_lossy();
            cur.guest_tags.push(docker::guest::tag_for(&dir, build));
        }
        cur.image_dirs.push(image.dir);
    }
    cur
}

/// The engine, when one answers (a report without it says so: `docker: null`).
pub async fn engine() -> Option<Docker> {
    docker::connect().await.ok()
}

/// `older_than`: "90s", "30m", "12h", "7d" (any humantime duration).
pub fn parse_older_than(v: &str) -> Result<Duration, SessionError> {
    humantime::parse_duration(v.trim()).map_err(|_| SessionError::OutOfRange {
        field: "older_than",
        value: v.chars().take(40).collect(),
        valid: "a duration such as 90s, 30m, 12h or 7d".into(),
    })
}

/// Export names must name existing review bundles: checked before anything is removed.
pub fn check_exports(layout: &Layout, names: &[String]) -> Result<(), SessionError> {
    for n in names {
        check_name("include", n)?;
        let caller = crate::session::Caller::current();
        if !crate::mcp::resources::visible(&layout.exports(), n, &caller) {
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

/// Runs a checked request against this host's storage and engine.
pub async fn run(layout: &Layout, req: &Request) -> Result<Report, SessionError> {
    check_exports(layout, &req.exports)?;
    let docker = engine().await;
    let cur = current(layout, docker.as_ref()).await;
    reclaim::run(layout, &cur, docker.as_ref(), req)
        .await
        .map_err(|e| IoError::new("reclaiming in", &layout.cache, e).into())
}

/// `deskvm reclaim [--apply] [--kind K]... [--include EXPORT]... [--older-than D] [--json]`.
pub async fn cli(
    apply: bool,
    kinds: Vec<Kind>,
    exports: Vec<String>,
    older_than: Option<String>,
    json: bool,
) -> Result<()> {
    let layout = Layout::from_env();
    let req = Request {
        apply,
        kinds: (!kinds.is_empty()).then_some(kinds),
        exports,
        older_than: older_than.as_deref().map(parse_older_than).transpose()?,
    };
    // The CLI is the machine's owner: it sees every token's exports.
    let report = crate::session::Caller::system()
        .scope(run(&layout, &req))
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    if report.failed.as_ref().is_some_and(|f| !f.is_empty()) {
        std::process::exit(2);
    }
    Ok(())
}

fn target(c: &reclaim::Candidate) -> String {
    let mut parts = Vec::new();
    if let Some(p) = &c.path {
        parts.push(p.display().to_string());
    }
    if let Some(n) = &c.container {
        parts.push(format!("container {n}"));
    }
    if let Some(p) = &c.process {
        parts.push(format!("QEMU pid {}", p.pid));
    }
    if let Some(i) = &c.image {
        parts.push(format!(
            "image {} {}",
            reclaim::short_id(i),
            c.tags.join(",")
        ));
    }
    parts.join(" + ")
}

fn print_report(r: &Report) {
    if r.docker.is_none() {
        println!("note: the Docker engine did not answer; containers and runtime images were not looked at");
    }
    match (&r.removed, &r.failed) {
        (Some(removed), Some(failed)) => {
            for x in removed {
                let what = format!("{} {}", x.item.kind.as_str(), target(&x.item));
                println!("removed  {:>10}  {what}", human(x.bytes_freed));
            }
            for f in failed {
                let what = format!("{} {}", f.item.kind.as_str(), target(&f.item));
                println!(
                    "FAILED   {:>10}  {what}: {} ({} still held)",
                    human(f.bytes_freed),
                    f.error,
                    human(f.bytes_remaining)
                );
            }
            println!(
                "reclaim --apply: removed {}, failed {}, freed {} ({} ms)",
                removed.len(),
                failed.len(),
                human(r.bytes_freed.unwrap_or(0)),
                r.took_ms
            );
        }
        _ => {
            for c in &r.candidates {
                let session = c
                    .session
                    .as_deref()
                    .map(|s| format!(" session {s}"))
                    .unwrap_or_default();
                println!(
                    "{:<15} {:>10}  {}{session}\n{:<28}why: {}",
                    c.kind.as_str(),
                    human(c.bytes),
                    target(c),
                    "",
                    c.why
                );
            }
            println!(
                "reclaim report: {} candidate(s), {} ({} ms); `deskvm reclaim --apply` removes them",
                r.candidates.len(),
                human(r.candidate_bytes),
                r.took_ms
            );
        }
    }
    for n in &r.not_touched {
        println!("kept     {}: {}", n.what, n.why);
    }
    let u = &r.usage;
    println!(
        "on disk: guest images {}, ready states {}, checkpoints {} ({}), build work {}, sessions {} ({}), ledgers {} ({}), exports {} ({}), runtime images {} ({})",
        human(u.guest_images.bytes),
        human(u.ready_states.bytes),
        human(u.checkpoints.bytes),
        u.checkpoints.count,
        human(u.build_work.bytes),
        human(u.sessions.bytes),
        u.sessions.count,
        human(u.ledgers.bytes),
        u.ledgers.count,
        human(u.exports.bytes),
        u.exports.count,
        human(u.runtime_images.bytes),
        u.runtime_images.count
    );
    match &r.last_janitor {
        Some(j) => println!(
            "last janitor run: {} by instance {}: removed {}, failed {}, freed {}",
            j["at"].as_str().unwrap_or("?"),
            j["instance"].as_str().unwrap_or("?"),
            j["removed"].as_array().map_or(0, Vec::len),
            j["failed"].as_array().map_or(0, Vec::len),
            human(j["bytes_freed"].as_u64().unwrap_or(0))
        ),
        None => println!("last janitor run: none recorded"),
    }
}

/// Adopts the current guest image and ready state when they predate owner markers (they are
/// in deskvm's own cache under deskvm's names), so a later recipe can supersede them.
pub fn adopt(image: &GuestImage, ready: Option<&ReadyState>) {
    use crate::storage::owner::{Owner, MARKER};
    for (dir, kind) in [
        (Some(&image.dir), "guest_image"),
        (ready.map(|r| &r.dir), "ready_state"),
    ] {
        if let Some(dir) = dir.filter(|d| !d.join(MARKER).exists()) {
            let _ = Owner::me(kind, None).write(dir);
        }
    }
}
