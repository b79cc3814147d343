//! Wiring for the CLI: host checks and setup, the session manager a server runs, and `doctor`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::accel;
use crate::backend::docker::{self, DockerBackend};
use crate::backend::local::{LocalBackend, QEMU};
use crate::backend::Backend;
use crate::image::ready::ReadyState;
use crate::image::{GuestImage, DEFAULT_IMAGE};
use crate::session::{boot, ManagerConfig, SessionManager, DEFAULT_MEMORY_MB};
use crate::storage::{self, Layout};
use crate::vm::spec::Accel;

const HOST_SETUP: &str = include_str!("../tools/host-setup.sh");

/// `auto`, `kvm` or `tcg` (flag `--accel` / env `DESKVM_ACCEL`).
#[derive(Debug, Clone, Copy)]
pub enum AccelChoice {
    Auto,
    Fixed(Accel),
}

impl std::fmt::Display for AccelChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AccelChoice::Auto => f.write_str("auto"),
            AccelChoice::Fixed(a) => f.write_str(a.as_str()),
        }
    }
}

impl std::str::FromStr for AccelChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("auto") {
            Ok(AccelChoice::Auto)
        } else {
            s.parse().map(AccelChoice::Fixed)
        }
    }
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

/// Host tools deskvm needs, with the package that brings each.
const HOST_TOOLS: &[(&str, &str)] = &[
    (QEMU, "qemu-system-x86"),
    ("qemu-img", "qemu-utils"),
    ("debootstrap", "debootstrap"),
    ("mkfs.ext4", "e2fsprogs"),
    ("dockerd", "docker.io"),
    // The live view's web client: files, not a program.
    ("/usr/share/novnc/core/rfb.js", "novnc"),
];

/// Not needed to run deskvm: the headless browser the test suite renders review viewers with,
/// and what `tools/test-engine.sh` makes a second, TLS-only Docker engine in its own network
/// namespace with (the remote-engine tests).
const TEST_TOOLS: &[(&str, &str)] = &[
    ("chromium", "chromium"),
    ("openssl", "openssl"),
    ("ip", "iproute2"),
    ("nsenter", "util-linux"),
];
/// The peers' stack `deskvm bench` measures beside deskvm (Xvfb + xdotool + ImageMagick).
const BENCH_TOOLS: &[(&str, &str)] = &[
    ("Xvfb", "xvfb"),
    ("xdotool", "xdotool"),
    ("import", "imagemagick"),
    ("xterm", "xterm"),
    ("openbox", "openbox"),
];

fn missing_tools() -> Vec<(&'static str, &'static str)> {
    missing_of(HOST_TOOLS)
}

fn missing_of(tools: &'static [(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    tools
        .iter()
        .copied()
        .filter(|(t, _)| {
            if t.starts_with('/') {
                return !Path::new(t).is_file();
            }
            !on_path(t)
                && !Path::new("/usr/sbin").join(t).is_file()
                && !Path::new("/sbin").join(t).is_file()
        })
        .collect()
}

/// QEMU older than 8 had broken PPM/PNG screendumps and lacks what the ready state relies on.
fn qemu_major(version: &str) -> Option<u32> {
    version
        .split("version ")
        .nth(1)?
        .split('.')
        .next()?
        .parse()
        .ok()
}

pub async fn install_host_packages() -> Result<()> {
    let mut missing = missing_tools();
    missing.extend(missing_of(TEST_TOOLS));
    missing.extend(missing_of(BENCH_TOOLS));
    let old_qemu = match crate::backend::local::qemu_version(Path::new(QEMU)).await {
        Ok(v) => qemu_major(&v).is_some_and(|m| m < 8),
        Err(_) => false,
    };
    if missing.is_empty() && !old_qemu {
        return Ok(());
    }
    let what: Vec<&str> = missing.iter().map(|(_, p)| *p).collect();
    eprintln!(
        "deskvm setup: installing host packages ({})",
        if what.is_empty() {
            "newer QEMU".into()
        } else {
            what.join(", ")
        }
    );
    if !crate::storage::is_root() {
        bail!("missing host packages {what:?}; run `sudo deskvm setup` or install them with apt-get (QEMU 8 or newer; on bookworm from bookworm-backports)");
    }
    let status = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(HOST_SETUP)
        .status()
        .await
        .context("running the host setup script")?;
    if !status.success() {
        bail!("host setup failed ({status}); see the apt output above");
    }
    Ok(())
}

pub async fn resolve_accel(
    layout: &Layout,
    backend: &LocalBackend,
    choice: AccelChoice,
) -> accel::Probe {
    match choice {
        AccelChoice::Fixed(a) => accel::Probe {
            accel: a,
            reason: "chosen with --accel / DESKVM_ACCEL".into(),
        },
        AccelChoice::Auto => match GuestImage::locate(layout, DEFAULT_IMAGE) {
            Ok(img) => {
                accel::detect(
                    layout,
                    Path::new(QEMU),
                    backend.qemu_version(),
                    &img.kernel(),
                    &img.initrd(),
                )
                .await
            }
            Err(_) => accel::Probe {
                accel: Accel::Tcg,
                reason: "no guest kernel to probe KVM with yet".into(),
            },
        },
    }
}

/// `auto`, `docker` or `local` (flag `--backend` / env `DESKVM_BACKEND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    Auto,
    Docker,
    Local,
}

impl std::str::FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(BackendChoice::Auto),
            "docker" => Ok(BackendChoice::Docker),
            "local" => Ok(BackendChoice::Local),
            other => Err(format!(
                "unknown backend {other:?}; valid: auto, docker, local"
            )),
        }
    }
}

/// The backend to run sessions on, and why it was chosen. `auto` takes Docker when the engine
/// answers and the runtime image exists, else the local backend.
pub async fn select_backend(
    layout: &Layout,
    choice: BackendChoice,
    accel: Accel,
    local: LocalBackend,
) -> Result<(Arc<dyn Backend>, String)> {
    match choice {
        BackendChoice::Local => Ok((Arc::new(local), "chosen with --backend local".into())),
        BackendChoice::Docker => {
            let b = DockerBackend::new(&layout.cache, accel).await?;
            Ok((Arc::new(b), "chosen with --backend docker".into()))
        }
        BackendChoice::Auto => match DockerBackend::new(&layout.cache, accel).await {
            Ok(b) => Ok((
                Arc::new(b),
                "auto: the Docker engine answers and the runtime image exists".into(),
            )),
            Err(e) => Ok((Arc::new(local), format!("auto: local, because {e}"))),
        },
    }
}

pub async fn manager(
    accel: AccelChoice,
    backend: BackendChoice,
    max_sessions: usize,
    idle_timeout: Option<std::time::Duration>,
    shared_memory: bool,
    engines: &[String],
    insecure_engine: bool,
) -> Result<Arc<SessionManager>> {
    let layout = Layout::from_env();
    storage::private_dir(&layout.sessions())
        .with_context(|| format!("creating {}", layout.sessions().display()))?;
    // What dead deskvm processes left behind; a live instance's things are never touched.
    let engine = docker::connect().await.ok();
    if let Err(e) = storage::janitor::run(&layout, engine.as_ref()).await {
        tracing::warn!(error = %e, "the startup janitor could not run");
    }
    let local = LocalBackend::new().await?;
    let probe = resolve_accel(&layout, &local, accel).await;
    let (backend, why, pool) = if engines.is_empty() {
        let (b, why) = select_backend(&layout, backend, probe.accel, local).await?;
        (b, why, None)
    } else {
        if backend == BackendChoice::Local {
            anyhow::bail!("--engine pools Docker engines; it does not go with --backend local");
        }
        let pool = crate::engines::pool(engines, insecure_engine, &layout, probe.accel).await?;
        for remote in pool.remote() {
            storage::janitor::run_on_engine(remote.docker(), &remote.engine().name).await;
        }
        let why = format!("--engine: {}", pool.names().join(", "));
        (pool.first() as Arc<dyn Backend>, why, Some(pool))
    };
    let mut me = storage::Owner::me("server", None);
    me.serving = Some("stdio".into());
    me.images.extend(backend.runtime_image());
    if let Ok(image) = GuestImage::locate(&layout, DEFAULT_IMAGE) {
        let spec = crate::session::machine_spec(&image, probe.accel, DEFAULT_MEMORY_MB, false);
        let ready = ReadyState::find(&image, backend.qemu_version(), &spec);
        crate::session::reclaim::adopt(&image, ready.as_ref());
        me.uses.push(image.dir.clone());
        if ready.is_some() && shared_memory {
            // Made once per cache, in about a second, from the ready state (no boot).
            match crate::session::template::ensure(&layout, backend.as_ref(), &image, &spec).await {
                Ok(t) => me.uses.push(t.dir),
                Err(e) => {
                    tracing::warn!(error = %crate::session::error::chain(&e), "no shared-memory template: sessions keep private memory")
                }
            }
        }
        me.uses.extend(ready.map(|r| r.dir));
    }
    if let Err(e) = storage::register_instance(&layout, &me) {
        tracing::warn!(error = %e, "could not record this server in the cache (a reclaim elsewhere cannot see what it uses)");
    }
    tracing::info!(accel = probe.accel.as_str(), reason = %probe.reason, backend = backend.name(), why = %why, qemu = backend.qemu_version(), "serving");
    let mgr = Arc::new(SessionManager::new(ManagerConfig {
        layout,
        backend,
        accel: probe.accel,
        max_sessions,
        idle_timeout,
        shared_memory,
        engines: pool,
    }));
    mgr.keep_warm();
    Ok(mgr)
}

fn say(line: &str) {
    eprintln!("  {line}");
}

/// Saves a ready state for `backend`'s QEMU build unless one exists.
async fn ensure_ready_state(
    layout: &Layout,
    image: &GuestImage,
    backend: Arc<dyn Backend>,
    accel: Accel,
    force: bool,
) -> Result<()> {
    let mgr = SessionManager::new(ManagerConfig {
        layout: layout.clone(),
        backend,
        accel,
        max_sessions: 1,
        idle_timeout: None,
        shared_memory: true,
        engines: None,
    });
    let spec = mgr.machine_spec(image, DEFAULT_MEMORY_MB, false);
    if !force {
        if let Some(r) = ReadyState::find(image, mgr.backend().qemu_version(), &spec) {
            crate::session::reclaim::adopt(image, Some(&r));
            say(&format!(
                "ready state for the {} backend is up to date: {}",
                mgr.backend().name(),
                r.dir.display()
            ));
            return ensure_template(layout, mgr.backend(), image, &spec).await;
        }
    }
    let work = layout
        .sessions()
        .join(format!("ready-{}", std::process::id()));
    let builder = storage::Owner::me("ready_build", None).uses([image.dir.clone()]);
    storage::owned_dir(&work, &builder)?;
    let result = boot::make_ready_state(mgr.backend(), image, spec.clone(), &work, &say).await;
    let _ = storage::remove_owned_dir(&work);
    result?;
    ensure_template(layout, mgr.backend(), image, &spec).await
}

/// The shared-memory template made from the ready state (about a second, no boot).
async fn ensure_template(
    layout: &Layout,
    backend: &dyn Backend,
    image: &GuestImage,
    spec: &crate::vm::spec::VmSpec,
) -> Result<()> {
    // Sessions fall back to private memory without one: a warning, not a failed setup.
    match crate::session::template::ensure(layout, backend, image, spec).await {
        Ok(t) => say(&format!("shared-memory template: {}", t.dir.display())),
        Err(e) => say(&format!(
            "no shared-memory template (sessions will use private memory): {}",
            crate::session::error::chain(&e)
        )),
    }
    Ok(())
}

/// Builds the guest image and its ready state when missing; with `runtime`, also the Docker
/// runtime image and a ready state made by its QEMU (shared when it is the host's build).
pub async fn build_image(
    choice: AccelChoice,
    force: bool,
    with_ready: bool,
    runtime: bool,
) -> Result<GuestImage> {
    let layout = Layout::from_env();
    let image = GuestImage::build(&layout, DEFAULT_IMAGE, force, &say).await?;
    let local = LocalBackend::new().await?;
    let probe = resolve_accel(&layout, &local, choice).await;
    eprintln!(
        "deskvm: accelerator {} ({})",
        probe.accel.as_str(),
        probe.reason
    );
    if with_ready {
        ensure_ready_state(&layout, &image, Arc::new(local), probe.accel, force).await?;
    }
    if runtime {
        let docker = docker::connect().await?;
        docker::build_runtime_image(&docker, &layout.work(), &say).await?;
        if with_ready {
            let backend = DockerBackend::new(&layout.cache, probe.accel).await?;
            ensure_ready_state(&layout, &image, Arc::new(backend), probe.accel, force).await?;
        }
    }
    Ok(image)
}

/// Starts dockerd in the background when it is installed but not answering (root only).
pub async fn ensure_dockerd() -> Result<()> {
    if docker::connect().await.is_ok() {
        return Ok(());
    }
    if std::env::var_os("DOCKER_HOST").is_some() {
        bail!("DOCKER_HOST is set but the engine there does not answer");
    }
    if !crate::storage::is_root()
        || !(on_path("dockerd") || Path::new("/usr/sbin/dockerd").is_file())
    {
        bail!("the Docker engine is not running; start it (`sudo dockerd &`) or run `sudo deskvm setup`");
    }
    eprintln!(
        "deskvm setup: starting dockerd in the background (log: /var/log/deskvm-dockerd.log)"
    );
    let log = std::fs::File::create("/var/log/deskvm-dockerd.log")?;
    let mut cmd = std::process::Command::new("dockerd");
    cmd.stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // Its own session: dockerd outlives this command, as a service would.
    // SAFETY: setsid is async-signal-safe, the one call allowed between fork and exec here.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::setsid();
            Ok(())
        });
    }
    cmd.spawn().context("starting dockerd")?;
    for _ in 0..60 {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        if docker::connect().await.is_ok() {
            return Ok(());
        }
    }
    bail!("dockerd did not answer within 30 s; see /var/log/deskvm-dockerd.log")
}

pub async fn setup(choice: AccelChoice) -> Result<()> {
    eprintln!(
        "deskvm setup: host packages, Docker engine, guest image, runtime image, ready states"
    );
    install_host_packages().await?;
    ensure_dockerd().await?;
    build_image(choice, false, true, true).await?;
    eprintln!("deskvm setup: done");
    Ok(())
}

/// Prints what deskvm sees on this host, with a fix for each problem; false if any.
pub async fn doctor(choice: AccelChoice, engines: &[String], insecure_engine: bool) -> bool {
    let layout = Layout::from_env();
    let mut ok = true;
    let mut report = |good: bool, what: String, fix: &str| {
        ok &= good;
        if good {
            println!("ok    {what}");
        } else {
            println!("FAIL  {what}\n      fix: {fix}");
        }
    };
    let missing = missing_tools();
    for (tool, pkg) in HOST_TOOLS {
        let present = !missing.iter().any(|(t, _)| t == tool);
        report(
            present,
            format!("{tool} present"),
            &format!("sudo deskvm setup (or apt-get install {pkg})"),
        );
    }
    let backend = LocalBackend::new().await;
    match &backend {
        Ok(b) => {
            let good = qemu_major(b.qemu_version()).is_some_and(|m| m >= 8);
            report(
                good,
                format!("QEMU: {}", b.qemu_version()),
                "install QEMU 8 or newer (bookworm: -t bookworm-backports qemu-system-x86)",
            );
        }
        Err(e) => report(false, format!("QEMU: {e}"), "sudo deskvm setup"),
    }
    let image = GuestImage::locate(&layout, DEFAULT_IMAGE);
    match &image {
        Ok(img) => report(true, format!("guest image: {}", img.dir.display()), ""),
        Err(e) => report(false, format!("guest image: {e}"), "sudo deskvm setup"),
    }
    if let Ok(b) = &backend {
        let probe = resolve_accel(&layout, b, choice).await;
        println!(
            "info  accelerator: {} ({})",
            probe.accel.as_str(),
            probe.reason
        );
        if let Ok(img) = &image {
            let mgr = SessionManager::new(ManagerConfig {
                layout: layout.clone(),
                backend: Arc::new(LocalBackend::new().await.expect("checked above")),
                accel: probe.accel,
                max_sessions: 1,
                idle_timeout: None,
                shared_memory: true,
                engines: None,
            });
            let spec = mgr.machine_spec(img, DEFAULT_MEMORY_MB, false);
            match ReadyState::find(img, b.qemu_version(), &spec) {
                Some(r) => report(true, format!("ready state: {}", r.dir.display()), ""),
                None => report(false, "ready state: none for this QEMU build and machine (sessions would cold-boot, ~40 s)".into(), "deskvm image build"),
            }
            // Not a failure either way: the private path works, only slower and bigger.
            match ReadyState::find_template(img, b.qemu_version(), &spec) {
                Some(t) => println!("info  guest memory: shared copy-on-write from the template {}", t.dir.display()),
                None => println!("info  guest memory: private per session (no shared-memory template for this ready state yet; a server makes one when it starts, `deskvm image build` too)"),
            }
        }
    }
    match docker::connect().await {
        Ok(d) => {
            report(true, "Docker engine answers".into(), "");
            let tag = docker::runtime_image_tag();
            match docker::image_qemu_version(&d, &tag).await {
                Some(v) => report(true, format!("runtime image {tag}: {v}"), ""),
                None => report(
                    false,
                    format!("runtime image {tag} missing"),
                    "sudo deskvm setup (or deskvm image build --runtime)",
                ),
            }
        }
        Err(e) => report(
            false,
            format!("Docker engine: {e}"),
            "sudo deskvm setup (installs docker.io and starts dockerd)",
        ),
    }
    if !engines.is_empty() {
        let local = LocalBackend::new().await;
        let accel = match &local {
            Ok(l) => resolve_accel(&layout, l, choice).await.accel,
            Err(_) => Accel::Tcg,
        };
        ok &= crate::engines::doctor(engines, insecure_engine, &layout, accel).await;
    }
    if let Ok(local) = LocalBackend::new().await {
        let probe = resolve_accel(&layout, &local, choice).await;
        match select_backend(&layout, BackendChoice::Auto, probe.accel, local).await {
            Ok((b, why)) => println!("info  backend for --backend auto: {} ({why})", b.name()),
            Err(e) => println!("info  backend for --backend auto: none ({e})"),
        }
    }
    let req = crate::storage::reclaim::Request::default();
    match crate::session::reclaim::run(&layout, &req).await {
        Ok(r) => {
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
            servers(&layout);
            session_disk(&layout);
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
        Err(e) => println!("info  disk: could not scan ({e})"),
    }
    println!(
        "info  image store (guest images, ready states; shared): {}",
        layout.cache.display()
    );
    let others = storage::roots::others(&layout).len();
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
    ok
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

pub fn default_demo_dir() -> PathBuf {
    std::env::current_dir()
        .unwrap_or_else(|_| PathBuf::from("."))
        .join("deskvm-demo")
}
