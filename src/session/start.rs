//! Starting a session: from a ready state, a checkpoint (a fork) or a cold boot, with its
//! runtime dir, owner marker, ledger and lane.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Mutex;

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

impl SessionManager {
    pub(super) async fn start_inner(
        &self,
        req: StartRequest,
        started: Instant,
    ) -> Result<SessionInfo, SessionError> {
        let caller = Caller::current();
        let mut req = req;
        // Held until this session's marker says which image and ready state it runs from:
        // a reclaim (which takes the lock exclusively) then sees them in use.
        let layout = self.cfg.layout.clone();
        let cache_lock = tokio::task::spawn_blocking(move || storage::CacheLock::shared(&layout))
            .await
            .map_err(|source| SessionError::Task {
                what: "locking the image store",
                source,
            })??;
        // Which engine runs it (with several engines), before anything is made for it; a fork
        // only where QEMU sees this host's files (its checkpoint is one).
        let memory_mb = check_range(
            "memory_mb",
            req.memory_mb.unwrap_or(DEFAULT_MEMORY_MB),
            MEMORY_RANGE,
        )?;
        let (backend_arc, placement) = self
            .place(&req, req.from_checkpoint.is_some(), memory_mb)
            .await?;
        let backend = backend_arc.as_ref();
        // Under the lock: a checkpoint_delete (exclusive) cannot take the fork's checkpoint
        // away before its marker names it.
        let fork = match req.from_checkpoint.clone() {
            Some(name) => Some(self.fork_source(&name, &mut req, backend)?),
            None => None,
        };
        let width = check_range("width", req.width.unwrap_or(MACHINE_WIDTH), WIDTH_RANGE)?;
        let height = check_range("height", req.height.unwrap_or(MACHINE_HEIGHT), HEIGHT_RANGE)?;
        let memory = req.memory_mb.unwrap_or(DEFAULT_MEMORY_MB);
        let memory_mb = check_range("memory_mb", memory, MEMORY_RANGE)?;
        let image = GuestImage::locate(
            &self.cfg.layout,
            req.image.as_deref().unwrap_or(DEFAULT_IMAGE),
        )?;
        // Starts in flight count too, or concurrent starts could overshoot the limit.
        let in_flight = self.starting.fetch_add(1, Ordering::SeqCst);
        let _reservation = Reservation(&self.starting);
        if self.sessions.read().await.len() + in_flight >= self.cfg.max_sessions {
            return Err(SessionError::TooMany {
                max: self.cfg.max_sessions,
            });
        }
        let spec = self.machine_spec(&image, memory_mb, req.network);
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
            None => self.resume_plan(&image, spec, backend),
        };
        if ready.is_none() {
            tracing::warn!("no ready state for this QEMU build and machine; cold-booting (run `deskvm image build` to save one)");
        }
        // A container the backend started ahead for a session like this one, if any.
        let id = backend.take_prepared(&spec).unwrap_or_else(new_id);
        // A start that fails before launching gives the prepared container back.
        let _release = Release(backend, &id);
        let next = spec.clone();
        let files = RuntimeFiles {
            dir: self.cfg.layout.sessions().join(&id),
        };
        let uses = std::iter::once(image.dir.clone())
            .chain(ready.as_ref().map(|r| r.dir.clone()))
            .chain(beneath.as_ref().map(|r| r.dir.clone()));
        let mut owner = storage::Owner::me("session", Some(&id)).uses(uses);
        owner.images.extend(backend.runtime_image());
        storage::session_dirs(&files, &owner)?;
        drop(cache_lock);
        let mut memory = if spec.shares_memory() {
            MemoryMode::Shared
        } else {
            MemoryMode::Private
        };
        let private_spec = self.machine_spec(&image, memory_mb, req.network);
        let mut booted = boot::start_vm(backend, &id, &image, spec, ready.as_ref(), &files).await;
        if let (Err(e), MemoryMode::Shared, Some(private)) = (&booted, memory, &beneath) {
            // The private path works wherever the template does not (a host that cannot map
            // the file, say): it is slower to start, not broken.
            tracing::warn!(error = %super::error::chain(e), "starting from the shared-memory template failed; starting with private memory");
            memory = MemoryMode::Private;
            booted =
                boot::start_vm(backend, &id, &image, private_spec, Some(private), &files).await;
        }
        let mut booted = match booted {
            Ok(b) => b,
            Err(e) => {
                let _ = storage::remove_session_dirs(&files);
                return Err(e);
            }
        };
        let ready_ledger = async {
            // A resumed desktop has its pointer where the ready state's builder clicked; a cold
            // boot's is put there, so the lane knows where it is either way.
            if booted.startup != Startup::ReadyState {
                let (x, y) = boot::TERMINAL_POINT;
                booted.vm.move_to(x, y).await?;
            }
            if (width, height) != (MACHINE_WIDTH, MACHINE_HEIGHT) {
                boot::set_resolution(&mut booted.vm, width, height).await?;
            }
            let mut meta = ReviewMeta::new(&id, "session");
            meta.image = Some(image.name.clone());
            meta.backend = Some(backend.name().to_string());
            meta.accelerator = Some(self.cfg.accel.as_str().to_string());
            (meta.width, meta.height) = (Some(width), Some(height));
            meta.token = caller.principal.clone();
            Ledger::create(&self.cfg.layout.reviews().join(&id), meta).map_err(SessionError::Ledger)
        }
        .await;
        let ledger = match ready_ledger {
            Ok(l) => Arc::new(l),
            Err(e) => {
                booted.instance.stop().await;
                let _ = storage::remove_session_dirs(&files);
                return Err(e);
            }
        };
        let info = SessionInfo {
            session_id: id.clone(),
            width,
            height,
            image: image.name.clone(),
            memory_mb,
            network: req.network,
            accelerator: self.cfg.accel,
            backend: backend.name().to_string(),
            engine: placement.as_ref().map(|p| p.engine.clone()),
            placement: placement.as_ref().map(|p| p.reason.clone()),
            startup: booted.startup,
            memory,
            startup_ms: started.elapsed().as_millis() as u64,
            state: "running".into(),
            connection: caller.connection.clone(),
            token: caller.principal.clone(),
            disk: None,
            viewers: None,
        };
        if booted.startup == Startup::ReadyState {
            booted.vm.sync_clock_in_background();
        }
        let exited = booted.instance.exited();
        watch_exit(&id, exited.clone(), ledger.clone());
        let geometry = Arc::new(std::sync::Mutex::new(geometry::Geometry {
            width,
            height,
            scale: 1.0,
        }));
        let viewers = Arc::new(viewers::Viewers::new(booted.vm.link()));
        let session = Arc::new(Session {
            viewers,
            info: info.clone(),
            lane: Mutex::new(Lane {
                memory,
                ..Lane::new(booted.vm, booted.instance, geometry.clone(), pointer)
            }),
            geometry,
            exited: std::sync::Mutex::new(exited),
            files,
            backend: backend_arc.clone(),
            ledger,
            after: std::sync::Mutex::new(None),
            last_call: std::sync::Mutex::new(Instant::now()),
        });
        self.sessions.write().await.insert(id.clone(), session);
        tracing::info!(session = %id, startup_ms = info.startup_ms, startup = ?info.startup, engine = ?info.engine, "session started");
        // On the engine this one went to: its next start there is the one to make faster.
        self.prepare_next(backend, &next);
        Ok(info)
    }

    /// The engine a session goes to: the pool's choice or the one `engine` names; without a
    /// pool, the one backend (and `engine` is refused by name).
    async fn place(
        &self,
        req: &StartRequest,
        fork: bool,
        memory_mb: u32,
    ) -> Result<(Arc<dyn crate::backend::Backend>, Option<Placement>), SessionError> {
        let Some(engines) = &self.cfg.engines else {
            if let Some(e) = &req.engine {
                return Err(SessionError::InvalidParams(format!(
                    "engine {e:?}: this server runs one backend ({}); start it with --engine to pool engines",
                    self.cfg.backend.name()
                )));
            }
            return Ok((self.cfg.backend.clone(), None));
        };
        let placed = engines
            .place(req.engine.as_deref(), fork, u64::from(memory_mb) + 768)
            .await
            .map_err(|e| match req.engine {
                Some(_) => SessionError::InvalidParams(e.to_string()),
                None => SessionError::Backend(e),
            })?;
        if fork && !placed.backend.files_on_host() {
            return Err(SessionError::NotOnEngine {
                what: "from_checkpoint",
                engine: placed.engine,
            });
        }
        Ok((placed.backend.clone(), Some(placed)))
    }

    /// From now on keeps a VM prepared for the next session where the backend gains from it
    /// (Docker), starting with one like a default `session_start`'s. Servers do; one-off
    /// managers (image builds) do not, so nothing is left prepared behind them.
    pub fn keep_warm(&self) {
        self.warm.store(true, Ordering::SeqCst);
        if let Ok(image) = GuestImage::locate(&self.cfg.layout, DEFAULT_IMAGE) {
            let spec = self.machine_spec(&image, DEFAULT_MEMORY_MB, false);
            for backend in self.backends() {
                self.prepare_next(backend.as_ref(), &spec);
            }
        }
    }

    /// Every backend sessions may run on: each engine of the pool, or the one backend.
    pub(super) fn backends(&self) -> Vec<Arc<dyn crate::backend::Backend>> {
        match &self.cfg.engines {
            Some(pool) => pool
                .up()
                .into_iter()
                .map(|b| b as Arc<dyn crate::backend::Backend>)
                .collect(),
            None => vec![self.cfg.backend.clone()],
        }
    }

    /// Has the backend prepare a VM for a next session like `spec`, in a runtime dir of its
    /// own (marked `warm`, so `doctor` does not list it as a session and reclaim removes it
    /// once this server is gone).
    fn prepare_next(&self, backend: &dyn crate::backend::Backend, spec: &VmSpec) {
        if !self.warm.load(Ordering::SeqCst) || !backend.prepares_ahead() {
            return;
        }
        let id = new_id();
        let files = RuntimeFiles {
            dir: self.cfg.layout.sessions().join(&id),
        };
        match storage::session_dirs(&files, &storage::Owner::me("warm", Some(&id))) {
            Ok(()) => backend.prepare(id, spec, files),
            Err(e) => tracing::warn!(error = %e, "cannot prepare a VM for the next session"),
        }
    }
}
