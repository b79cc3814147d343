//! Where sessions run: the engine a new one goes to (with several, `--engine`), and the VM
//! each engine keeps prepared for the next start.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::*;
use crate::backend::pool::Placement;

impl SessionManager {
    /// The engine a session goes to: the pool's choice or the one `engine` names; without a
    /// pool, the one backend (and `engine` is refused by name).
    pub(super) async fn place(
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
        if let Ok(image) = GuestImage::locate(&self.cfg.layout, &self.cfg.image) {
            let spec = self.machine_spec(&image, None, false);
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
    pub(super) fn prepare_next(&self, backend: &dyn crate::backend::Backend, spec: &VmSpec) {
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
