//! An imported disk's first start: it has no ready state until then, so that start cold-boots
//! it, saves one, and resumes it like every later start.

use super::desktop::Desktop;
use super::*;

impl SessionManager {
    /// An imported disk has no ready state until its first start: that start cold-boots it,
    /// saves one (a minute or more under TCG; the call's progress notifications tick
    /// meanwhile), and resumes it like every later start. Returns whether a guest agent
    /// answers in the image (recipe images always have one).
    pub(super) async fn ensure_first_ready_state(
        &self,
        desktop: &Desktop,
        fork: bool,
        backend: &dyn crate::backend::Backend,
    ) -> Result<(bool, bool), SessionError> {
        let image = &desktop.image;
        if image.boots_kernel() {
            return Ok((true, false));
        }
        let spec = self.machine_spec(image, Some(desktop.memory_mb), desktop.network);
        if let Some(r) = ReadyState::find(image, backend.qemu_version(), &spec) {
            return Ok((r.has_agent(), false));
        }
        if fork {
            return Ok((true, false));
        }
        // One first boot per image store at a time: two first starts at once would otherwise
        // both save a ready state and the second would replace the disk the first one's
        // session already runs on. The one that waited finds the other's ready state.
        let layout = self.cfg.layout.clone();
        let _lock = tokio::task::spawn_blocking(move || {
            storage::CacheLock::builder(&layout, ".ready-build.lock")
        })
        .await
        .map_err(|source| SessionError::Task {
            what: "locking the image store for a first boot",
            source,
        })??;
        if let Some(r) = ReadyState::find(image, backend.qemu_version(), &spec) {
            return Ok((r.has_agent(), false));
        }
        let work =
            self.cfg
                .layout
                .sessions()
                .join(format!("ready-{}-{}", std::process::id(), new_id()));
        let builder = storage::Owner::me("ready_build", None).uses([image.dir.clone()]);
        storage::owned_dir(&work, &builder)?;
        // Removed however this ends, a cancelled call too (the future dropped mid-boot).
        let _work = RemoveOnDrop(work.clone());
        let say = |line: &str| tracing::info!(image = %image.name, "{line}");
        let made = boot::make_ready_state(backend, image, spec, &work, &say).await;
        Ok((made?.has_agent(), true))
    }
}

/// A first boot's work directory, removed when the boot ends or is cancelled.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = storage::remove_owned_dir(&self.0);
    }
}
