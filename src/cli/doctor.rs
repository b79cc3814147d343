//! `deskvm doctor`: what deskvm sees on this host (tools, QEMU, images, ready states, engines,
//! disk, servers, directories), with a fix for each problem.

use std::path::PathBuf;
use std::sync::Arc;

use super::choice::{resolve_accel, select_backend, AccelChoice, BackendChoice};
use super::host_packages::{missing_tools, qemu_major, HOST_TOOLS};
use crate::backend::docker;
use crate::backend::local::LocalBackend;
use crate::backend::Backend;
use crate::guest_image::ready::ReadyState;
use crate::guest_image::{GuestImage, DEFAULT_IMAGE};
use crate::session::{ManagerConfig, SessionManager};
use crate::storage::{self, Layout};
use crate::vm::spec::Accel;

/// Prints what deskvm sees on this host, with a fix for each problem; false if any.
pub async fn doctor(choice: AccelChoice, engines: &[String], insecure_engine: bool) -> bool {
    let layout = Layout::from_env();
    let mut c = Checks { ok: true };
    host_tools(&mut c);
    let backend = LocalBackend::new().await;
    match &backend {
        Ok(b) => {
            let good = qemu_major(b.qemu_version()).is_some_and(|m| m >= 8);
            c.report(
                good,
                format!("QEMU: {}", b.qemu_version()),
                "install QEMU 8 or newer (bookworm: -t bookworm-backports qemu-system-x86)",
            );
        }
        Err(e) => c.report(false, format!("QEMU: {e}"), "sudo deskvm setup"),
    }
    if let Err(e) = GuestImage::locate(&layout, DEFAULT_IMAGE) {
        c.report(false, format!("guest image: {e}"), "sudo deskvm setup");
    }
    let images = GuestImage::available(&layout);
    for img in &images {
        c.report(
            true,
            format!("guest image {}: {}", img.name, img.dir.display()),
            "",
        );
    }
    if let Ok(b) = &backend {
        let probe = resolve_accel(&layout, b, choice).await;
        println!(
            "info  accelerator: {} ({})",
            probe.accel.as_str(),
            probe.reason
        );
        for img in &images {
            ready_state(&mut c, &layout, b, img, probe.accel).await;
        }
    }
    docker_engine(&mut c).await;
    if !engines.is_empty() {
        let local = LocalBackend::new().await;
        let accel = match &local {
            Ok(l) => resolve_accel(&layout, l, choice).await.accel,
            Err(_) => Accel::Tcg,
        };
        c.ok &= super::engines::doctor(engines, insecure_engine, &layout, accel).await;
    }
    auto_backend(&layout, choice).await;
    disk(&layout).await;
    dirs(&layout);
    c.ok
}

/// The checks' verdict so far, and how each is printed.
struct Checks {
    ok: bool,
}

impl Checks {
    fn report(&mut self, good: bool, what: String, fix: &str) {
        self.ok &= good;
        if good {
            println!("ok    {what}");
        } else {
            println!("FAIL  {what}\n      fix: {fix}");
        }
    }
}

fn host_tools(c: &mut Checks) {
    let missing = missing_tools();
    for (tool, pkg) in HOST_TOOLS {
        let present = !missing.iter().any(|(t, _)| t == tool);
        c.report(
            present,
            format!("{tool} present"),
            &format!("sudo deskvm setup (or apt-get install {pkg})"),
        );
    }
}

/// The ready state for this host's QEMU build and the default machine, and its template.
async fn ready_state(
    c: &mut Checks,
    layout: &Layout,
    b: &LocalBackend,
    img: &GuestImage,
    accel: Accel,
) {
    let mgr = SessionManager::new(ManagerConfig {
        layout: layout.clone(),
        backend: Arc::new(LocalBackend::new().await.expect("checked above")),
        accel,
        max_sessions: 1,
        idle_timeout: None,
        shared_memory: true,
        engines: None,
        image: img.name.clone(),
        net: Default::default(),
    });
    let spec = mgr.machine_spec(img, None, false);
    let name = &img.name;
    match ReadyState::find(img, b.qemu_version(), &spec) {
        Some(r) => c.report(true, format!("ready state of {name}: {}", r.dir.display()), ""),
        // An imported disk saves its ready state on its first start.
        None if !img.boots_kernel() => println!(
            "info  ready state of {name}: none yet (its first session cold-boots and saves one)"
        ),
        None => c.report(
            false,
            format!("ready state of {name}: none for this QEMU build and machine (sessions would cold-boot)"),
            &format!("deskvm image build {name}"),
        ),
    }
    // Not a failure either way: the private path works, only slower and bigger.
    match ReadyState::find_template(img, b.qemu_version(), &spec) {
        Some(t) => println!("info  guest memory: shared copy-on-write from the template {}", t.dir.display()),
        None => println!("info  guest memory: private per session (no shared-memory template for this ready state yet; a server makes one when it starts, `deskvm image build` too)"),
    }
}

/// This host's Docker engine and the runtime image on it.
async fn docker_engine(c: &mut Checks) {
    match docker::connect().await {
        Ok(d) => {
            c.report(true, "Docker engine answers".into(), "");
            let tag = docker::runtime_image_tag();
            match docker::image_qemu_version(&d, &tag).await {
                Some(v) => c.report(true, format!("runtime image {tag}: {v}"), ""),
                None => c.report(
                    false,
                    format!("runtime image {tag} missing"),
                    "sudo deskvm setup (or deskvm image build --runtime)",
                ),
            }
        }
        Err(e) => c.report(
            false,
            format!("Docker engine: {e}"),
            "sudo deskvm setup (installs docker.io and starts dockerd)",
        ),
    }
}

/// Which backend `--backend auto` would take now, and why.
async fn auto_backend(layout: &Layout, choice: AccelChoice) {
    if let Ok(local) = LocalBackend::new().await {
        let probe = resolve_accel(layout, &local, choice).await;
        match select_backend(layout, BackendChoice::Auto, probe.accel, local).await {
            Ok((b, why)) => println!("info  backend for --backend auto: {} ({why})", b.name()),
            Err(e) => println!("info  backend for --backend auto: none ({e})"),
        }
    }
}

/// What deskvm holds on disk (a reclaim report, nothing removed), the live view's client, the
/// servers and sessions running, and the last janitor run.
async fn disk(layout: &Layout) {
    let req = crate::storage::reclaim::Request::default();
    let r = match crate::session::reclaim::run(layout, &req).await {
        Ok(r) => r,
        Err(e) => return println!("info  disk: could not scan ({e})"),
    };
    let u = &r.usage;
    let h = crate::storage::usage::human;
    println!(
        "info  disk: guest images {}, ready states {}, build work {}, sessions {} in {}, ledgers {} in {}, exports {} in {}, runtime images {} in {}",
        h(u.guest_images.bytes), h(u.ready_states.bytes), h(u.build_work.bytes),
        u.sessions.count, h(u.sessions.bytes), u.ledgers.count, h(u.ledgers.bytes),
        u.exports.count, h(u.exports.bytes), u.runtime_images.count, h(u.runtime_images.bytes)
    );
    if let Some(dir) = crate::view::novnc_dir() {
        println!(
            "info  live view: noVNC from {}; a stdio server serves it on a loopback port (--view-addr, default 127.0.0.1:0, listed per server below), an HTTP server at /view/",
            dir.display()
        );
    }
    servers(layout);
    session_disk(layout);
    println!(
        "info  reclaimable: {} item(s), {} (see `deskvm reclaim`, remove with --apply)",
        r.candidates.len(),
        h(r.candidate_bytes)
    );
    if let Some(j) = &r.last_janitor {
        println!(
            "info  last janitor run: {} removed {} item(s), {} failed",
            j["at"].as_str().unwrap_or("?"),
            j["removed"].as_array().map_or(0, Vec::len),
            j["failed"].as_array().map_or(0, Vec::len)
        );
    }
}

/// The image store, the state root (and how many others share the store), data and runtime.
fn dirs(layout: &Layout) {
    println!(
        "info  image store (guest images, ready states; shared): {}",
        layout.cache.display()
    );
    let others = storage::roots::others(layout).len();
    println!(
        "info  state root (checkpoints): {}{}",
        layout.state.display(),
        match others {
            0 => String::new(),
            n => format!("; {n} other state root(s) keep checkpoints on this image store"),
        }
    );
    println!(
        "info  data dir (review ledgers, exported reviews): {}",
        layout.data.display()
    );
    println!("info  runtime dir: {}", layout.runtime.display());
}

/// The deskvm servers running now (from their records in the cache) and what each exposes.
fn servers(layout: &Layout) {
    let mut found = 0;
    for e in std::fs::read_dir(layout.instances())
        .into_iter()
        .flatten()
        .flatten()
    {
        let Some(o) = storage::Owner::load(&e.path()) else {
            continue;
        };
        if o.liveness() == storage::Liveness::Alive {
            found += 1;
            println!(
                "info  server {} (pid {}): {}",
                o.instance,
                o.pid,
                o.serving.as_deref().unwrap_or("?")
            );
        }
    }
    if found == 0 {
        println!("info  servers: none running");
    }
}

/// One line per session in the runtime dir: whose it is, and its runtime dir and ledger bytes.
fn session_disk(layout: &Layout) {
    use crate::storage::usage::{disk_bytes, human};
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(layout.sessions())
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    dirs.sort();
    for dir in dirs {
        let Some(owner) = storage::Owner::read(&dir).filter(|o| o.kind == "session") else {
            continue;
        };
        let id = owner.session.clone().unwrap_or_default();
        let state = match owner.liveness() {
            storage::Liveness::Alive => {
                format!("running (instance {}, pid {})", owner.instance, owner.pid)
            }
            storage::Liveness::Dead(why) => format!("orphaned: {why}"),
            storage::Liveness::Unknown(why) => why,
        };
        println!(
            "info  session {id}: runtime dir {}, ledger {}; {state}",
            human(disk_bytes(&dir)),
            human(disk_bytes(&layout.reviews().join(&id)))
        );
    }
}
