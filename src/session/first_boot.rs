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
        let work =
            self.cfg
                .layout
                .sessions()
                .join(format!("ready-{}-{}", std::process::id(), new_id()));
        let builder = storage::Owner::me("ready_build", None).uses([image.dir.clone()]);
        storage::owned_dir(&work, &builder)?;
        let say = |line: &str| tracing::info!(image = %image.name, "{line}");
        let made = boot::make_ready_state(backend, image, spec, &work, &say).await;
        let _ = storage::remove_owned_dir(&work);
        Ok((made?.has_agent(), true))
    }
}
