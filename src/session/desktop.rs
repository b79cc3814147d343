//! What a start asks for (`StartRequest`), and the desktop it gets once checked (`Desktop`):
//! the image, and the size and memory it defaults to.

use super::network::NetworkMode;
use super::*;

#[derive(Debug, Clone, Default)]
pub struct StartRequest {
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub image: Option<String>,
    pub memory_mb: Option<u32>,
    /// What the guest may reach (checked into a [`NetRequest`] before anything runs).
    pub network: NetworkMode,
    /// Host loopback services to show in the guest at host.deskvm.internal:PORT.
    pub forward: Vec<String>,
    /// Start as a fork of this checkpoint (its size, memory and image).
    pub from_checkpoint: Option<String>,
    /// Run on this engine of the server's pool (`--engine`).
    pub engine: Option<String>,
}

impl StartRequest {
    pub(super) fn record(&self) -> serde_json::Value {
        let network = match &self.network {
            NetworkMode::Allow(entries) => json!({ "allow": entries }),
            mode => json!(mode.name()),
        };
        json!({ "width": self.width, "height": self.height, "image": self.image, "memory_mb": self.memory_mb, "network": network, "forward": self.forward, "from_checkpoint": self.from_checkpoint, "engine": self.engine })
    }
}

/// The desktop a start asks for, checked.
pub(super) struct Desktop {
    pub(super) width: u32,
    pub(super) height: u32,
    pub(super) memory_mb: u32,
    /// Open NAT (the machine's `network`).
    pub(super) network: bool,
    pub(super) image: GuestImage,
}

impl Desktop {
    pub(super) fn of(
        layout: &Layout,
        req: &StartRequest,
        default_image: &str,
    ) -> Result<Self, SessionError> {
        let image = GuestImage::locate(layout, req.image.as_deref().unwrap_or(default_image))?;
        let m = &image.meta;
        let width = check_range("width", req.width.unwrap_or(m.width), WIDTH_RANGE)?;
        let height = check_range("height", req.height.unwrap_or(m.height), HEIGHT_RANGE)?;
        let memory = req.memory_mb.unwrap_or(m.memory_mb);
        let memory_mb = check_range("memory_mb", memory, MEMORY_RANGE)?;
        // An imported guest may have no xrandr and no agent to run it: its screen is its own.
        if !image.boots_kernel() && (width, height) != (m.width, m.height) {
            return Err(SessionError::OutOfRange {
                field: "width/height",
                value: format!("{width}x{height}"),
                valid: format!(
                    "{}x{} (image {} is an imported disk; its screen size is the guest's own)",
                    m.width, m.height, image.name
                ),
            });
        }
        Ok(Desktop {
            width,
            height,
            memory_mb,
            network: req.network == NetworkMode::Open,
            image,
        })
    }
}
