//! Starting a session: from a ready state, a checkpoint (a fork) or a cold boot, with its
//! runtime dir, owner marker, ledger and lane.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Mutex;

use super::checkpoint::CheckpointInfo;
use super::desktop::Desktop;
use super::network::{NetRequest, NetworkMode, Wiring};
use super::*;
use crate::backend::pool::Placement;

/// Gives a prepared VM back to the backend if the start did not launch it (a no-op once it
/// did).
struct Release<'a>(&'a dyn crate::backend::Backend, &'a str);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.0.release(self.1);
    }
}

/// Releases a start's place in [`SessionManager::starting`] however the start ends.
struct Reservation<'a>(&'a AtomicUsize);

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How a desktop starts: the machine as it boots, the state it loads (a ready state, a
/// template or the fork's checkpoint), the private ready state beneath a template, and where
/// the guest's pointer is.
struct Launch {
    spec: VmSpec,
    ready: Option<ReadyState>,
    beneath: Option<ReadyState>,
    pointer: (u32, u32),
}

/// A start whose VM booted.
struct Started {
    /// Whether a guest agent answers in it (see [`ReadyState::has_agent`]).
    agent: bool,
    id: String,
    desktop: Desktop,
    files: RuntimeFiles,
    backend: Arc<dyn crate::backend::Backend>,
    placement: Option<Placement>,
    memory: MemoryMode,
    started: Instant,
    net: NetRequest,
    wiring: Option<Wiring>,
}

impl Started {
    fn info(&self, caller: &Caller, startup: Startup, accel: Accel) -> SessionInfo {
        let d = &self.desktop;
        SessionInfo {
            session_id: self.id.clone(),
            width: d.width,
            height: d.height,
            image: d.image.name.clone(),
            memory_mb: d.memory_mb,
            network: self.net.describe(),
            accelerator: accel,
            backend: self.backend.name().to_string(),
            engine: self.placement.as_ref().map(|p| p.engine.clone()),
            placement: self.placement.as_ref().map(|p| p.reason.clone()),
            startup,
            memory: self.memory,
            startup_ms: self.started.elapsed().as_millis() as u64,
            state: "running".into(),
            connection: caller.connection.clone(),
            token: caller.principal.clone(),
            disk: None,
            viewers: None,
        }
    }
}

/// The session's runtime dir, with its owner marker naming what it runs on (image, ready
/// state, template's ready state, runtime image): reclaim keeps those while it runs.
fn make_dirs(
    backend: &dyn crate::backend::Backend,
    id: &str,
    files: &RuntimeFiles,
    desktop: &Desktop,
    launch: &Launch,
) -> Result<(), SessionError> {
    let uses = std::iter::once(desktop.image.dir.clone())
        .chain(launch.ready.as_ref().map(|r| r.dir.clone()))
        .chain(launch.beneath.as_ref().map(|r| r.dir.clone()));
    let mut owner = storage::Owner::me("session", Some(id)).uses(uses);
    owner.images.extend(backend.runtime_image());
    storage::session_dirs(files, &owner)?;
    Ok(())
}

impl SessionManager {
    pub async fn start(&self, req: StartRequest) -> Result<SessionInfo, SessionError> {
        let started = Instant::now();
        let args = req.record();
        let result = self.start_inner(req, started).await;
        match &result {
            Ok(info) => {
                let session = self.get(&info.session_id).await?;
                let recorded = session.record_ok(
                    "session_started",
                    "session_start",
                    args,
                    serde_json::to_value(info).unwrap_or_default(),
                    started,
                );
                match recorded {
                    Ok(seq) => {
                        // The desktop as the session starts, once it is still.
                        session.lane.lock().await.await_after(seq);
                        super::after::spawn_after_frame(&session, seq);
                    }
                    // The desktop runs: failing the call now would leave it with nobody's id.
                    Err(e) => {
                        tracing::error!(error = %chain(&e), "could not record the session start")
                    }
                }
            }
            Err(e) => self.record_server("session_start", args, Err(e), started),
        }
        result
    }

    /// The image store's lock, shared: held by a start or a restore until the session's marker
    /// names what it runs on, so a reclaim (which takes it exclusively) sees those in use.
    pub(super) async fn lock_cache_shared(&self) -> Result<storage::CacheLock, SessionError> {
        let layout = self.cfg.layout.clone();
        tokio::task::spawn_blocking(move || storage::CacheLock::shared(&layout))
            .await
            .map_err(|source| SessionError::Task {
                what: "locking the image store",
                source,
            })?
            .map_err(SessionError::from)
    }

    pub(super) async fn start_inner(
        &self,
        req: StartRequest,
        started: Instant,
    ) -> Result<SessionInfo, SessionError> {
        let mut req = req;
        let net = NetRequest::check(
            std::mem::take(&mut req.network),
            &req.forward,
            &self.cfg.net,
            Caller::current().principal.as_deref(),
        )?;
        req.network = net.mode.clone();
        let cache_lock = self.lock_cache_shared().await?;
        // Which engine runs it (with several engines), before anything is made for it; a fork
        // only where QEMU sees this host's files (its checkpoint is one).
        let image_memory = GuestImage::locate(
            &self.cfg.layout,
            req.image.as_deref().unwrap_or(&self.cfg.image),
        )
        .map_or(1024, |i| i.meta.memory_mb);
        let memory_mb = check_range(
            "memory_mb",
            req.memory_mb.unwrap_or(image_memory),
            MEMORY_RANGE,
        )?;
        let (backend_arc, placement) = self
            .place(&req, req.from_checkpoint.is_some(), memory_mb)
            .await?;
        let backend = backend_arc.as_ref();
        let needs_host = !net.forwards.is_empty() || matches!(net.mode, NetworkMode::Allow(_));
        if needs_host && !backend.files_on_host() {
            return Err(SessionError::Unavailable {
                what: "network allow and forward",
                why: format!(
                    "engine {} shares no files with this host, and the proxy and forwards reach QEMU through unix sockets in the session's runtime dir; use `none` or `open` there, or a local engine",
                    placement.as_ref().map_or("?", |p| p.engine.as_str())
                ),
            });
        }
        // Under the lock: a checkpoint_delete (exclusive) cannot take the fork's checkpoint
        // away before its marker names it.
        let fork = match req.from_checkpoint.clone() {
            Some(name) => Some(self.fork_source(&name, &mut req, backend)?),
            None => None,
        };
        let desktop = Desktop::of(&self.cfg.layout, &req, &self.cfg.image)?;
        // Starts in flight count too, or concurrent starts could overshoot the limit.
        let in_flight = self.starting.fetch_add(1, Ordering::SeqCst);
        let _reservation = Reservation(&self.starting);
        if self.sessions.read().await.len() + in_flight >= self.cfg.max_sessions {
            return Err(SessionError::TooMany {
                max: self.cfg.max_sessions,
            });
        }
        let (agent, first_boot) = self
            .ensure_first_ready_state(&desktop, fork.is_some(), backend)
            .await?;
        if net.needs_guest() && !agent {
            return Err(super::network::no_agent());
        }
        let mut launch = self.launch(&desktop, fork, backend);
        // A container the backend started ahead for a session like this one, if any.
        let id = backend.take_prepared(&launch.spec).unwrap_or_else(new_id);
        // A start that fails before launching gives the prepared container back.
        let _release = Release(backend, &id);
        let files = RuntimeFiles {
            dir: self.cfg.layout.sessions().join(&id),
        };
        make_dirs(backend, &id, &files, &desktop, &launch)?;
        drop(cache_lock);
        // QEMU sees the runtime dir at this host's path (the local backend, or bound into a
        // container on this host's engine).
        let wiring = match net.needs_guest() {
            true => Some(
                Wiring::start(&net, &self.cfg.net, &files, &files).inspect_err(|_| {
                    let _ = storage::remove_session_dirs(&files);
                })?,
            ),
            false => None,
        };
        launch.spec.guestfwd = wiring
            .as_ref()
            .map(|w| w.guestfwd.clone())
            .unwrap_or_default();
        let (mut booted, memory) = self.boot(backend, &id, &desktop, &launch, &files).await?;
        if first_boot {
            booted.startup = Startup::FirstBoot;
        }
        let start = Started {
            agent,
            id: id.clone(),
            desktop,
            files,
            backend: backend_arc.clone(),
            placement,
            memory,
            started,
            net,
            wiring,
        };
        let info = self.open(start, booted, launch.pointer).await?;
        // On the engine this one went to: its next start there is the one to make faster.
        self.prepare_next(backend, &launch.spec);
        Ok(info)
    }

    /// How `desktop` starts: from the fork's checkpoint, else as [`SessionManager::resume_plan`]
    /// says.
    fn launch(
        &self,
        desktop: &Desktop,
        fork: Option<(ReadyState, CheckpointInfo)>,
        backend: &dyn crate::backend::Backend,
    ) -> Launch {
        let spec = self.machine_spec(&desktop.image, Some(desktop.memory_mb), desktop.network);
        // A fork's pointer is where its checkpoint's was; a ready state's is where its builder
        // clicked (a cold boot puts it there).
        let pointer = fork
            .as_ref()
            .map_or(boot::TERMINAL_POINT, |(_, info)| info.pointer);
        // What the session runs on besides its image: the state it loads, and the template its
        // memory is mapped from (a checkpoint of a shared-memory session needs it too).
        let (spec, ready, beneath) = match fork {
            // A checkpoint holds every page: it loads into private memory.
            Some((checkpoint, _)) => (spec, Some(checkpoint), None),
            None => self.resume_plan(&desktop.image, spec, backend),
        };
        if ready.is_none() {
            tracing::warn!("no ready state for this QEMU build and machine; cold-booting (run `deskvm image build` to save one)");
        }
        Launch {
            spec,
            ready,
            beneath,
            pointer,
        }
    }

    /// Boots the session's VM, and says how its RAM is held. A start from the shared-memory
    /// template that fails is tried again with private memory; a start that fails altogether
    /// takes its runtime dir with it.
    async fn boot(
        &self,
        backend: &dyn crate::backend::Backend,
        id: &str,
        desktop: &Desktop,
        launch: &Launch,
        files: &RuntimeFiles,
    ) -> Result<(boot::Booted, MemoryMode), SessionError> {
        let mut memory = if launch.spec.shares_memory() {
            MemoryMode::Shared
        } else {
            MemoryMode::Private
        };
        let image = &desktop.image;
        let spec = launch.spec.clone();
        let mut booted =
            boot::start_vm(backend, id, image, spec, launch.ready.as_ref(), files).await;
        if let (Err(e), MemoryMode::Shared, Some(private)) = (&booted, memory, &launch.beneath) {
            // The private path works wherever the template does not (a host that cannot map
            // the file, say): it is slower to start, not broken.
            tracing::warn!(error = %super::error::chain(e), "starting from the shared-memory template failed; starting with private memory");
            memory = MemoryMode::Private;
            let mut private_spec =
                self.machine_spec(image, Some(desktop.memory_mb), desktop.network);
            private_spec.guestfwd = launch.spec.guestfwd.clone();
            booted = boot::start_vm(backend, id, image, private_spec, Some(private), files).await;
        }
        match booted {
            Ok(b) => Ok((b, memory)),
            Err(e) => {
                let _ = storage::remove_session_dirs(files);
                Err(e)
            }
        }
    }

    /// The booted desktop made ready (pointer, size) with its ledger, and the session that
    /// runs it, open to calls. A desktop that cannot be made ready is stopped and removed.
    async fn open(
        &self,
        start: Started,
        mut booted: boot::Booted,
        pointer: (u32, u32),
    ) -> Result<SessionInfo, SessionError> {
        let caller = Caller::current();
        let ledger = match self.make_ready(&start, &mut booted, &caller).await {
            Ok(l) => Arc::new(l),
            Err(e) => {
                booted.instance.stop().await;
                let _ = storage::remove_session_dirs(&start.files);
                return Err(e);
            }
        };
        if let Some(w) = &start.wiring {
            w.log.attach(ledger.clone());
        }
        let info = start.info(&caller, booted.startup, self.cfg.accel);
        if booted.startup == Startup::ReadyState {
            booted.vm.sync_clock_in_background();
        }
        let exited = booted.instance.exited();
        watch_exit(&start.id, exited.clone(), ledger.clone());
        let d = &start.desktop;
        let geometry = Arc::new(std::sync::Mutex::new(geometry::Geometry {
            width: d.width,
            height: d.height,
            scale: 1.0,
        }));
        let viewers = Arc::new(viewers::Viewers::new(booted.vm.link()));
        let guest = lane::Guest {
            image: d.image.name.clone(),
            user: Some(d.image.meta.user.clone()).filter(|u| u != "root"),
            agent: start.agent,
        };
        let lane = Lane::new(booted.vm, booted.instance, geometry.clone(), pointer, guest);
        let session = Arc::new(Session {
            viewers,
            net: start.net,
            guestfwd: start
                .wiring
                .as_ref()
                .map(|w| w.guestfwd.clone())
                .unwrap_or_default(),
            wiring: std::sync::Mutex::new(start.wiring),
            info: info.clone(),
            lane: Mutex::new(lane),
            geometry,
            exited: std::sync::Mutex::new(exited),
            files: start.files,
            backend: start.backend,
            ledger,
            after: std::sync::Mutex::new(None),
            last_call: std::sync::Mutex::new(Instant::now()),
        });
        self.sessions
            .write()
            .await
            .insert(start.id.clone(), session);
        tracing::info!(session = %start.id, startup_ms = info.startup_ms, startup = ?info.startup, engine = ?info.engine, "session started");
        Ok(info)
    }

    /// Puts the pointer where the lane thinks it is and the screen at the size asked for, and
    /// makes the session's review ledger.
    async fn make_ready(
        &self,
        start: &Started,
        booted: &mut boot::Booted,
        caller: &Caller,
    ) -> Result<Ledger, SessionError> {
        // A resumed desktop has its pointer where the ready state's builder clicked; a cold
        // boot's is put there, so the lane knows where it is either way.
        if booted.startup != Startup::ReadyState {
            let (x, y) = boot::TERMINAL_POINT;
            booted.vm.move_to(x, y).await?;
        }
        let d = &start.desktop;
        if (d.width, d.height) != (d.image.meta.width, d.image.meta.height) {
            boot::set_resolution(&mut booted.vm, d.width, d.height).await?;
        }
        let mut meta = ReviewMeta::new(&start.id, "session");
        meta.image = Some(d.image.name.clone());
        meta.backend = Some(start.backend.name().to_string());
        meta.accelerator = Some(self.cfg.accel.as_str().to_string());
        (meta.width, meta.height) = (Some(d.width), Some(d.height));
        meta.token = caller.principal.clone();
        let dir = self.cfg.layout.reviews().join(&start.id);
        // Before the ledger: a start that fails here leaves no review that says "running".
        if start.net.needs_guest() {
            super::network::configure_guest(&booted.vm, &start.net, start.agent).await?;
        }
        Ledger::create(&dir, meta).map_err(SessionError::Ledger)
    }
}
