//! Reading a virtio device's rings over QMP (`x-query-virtio-queue-element`, QEMU 7.2+):
//! how typing (`vm::typing`) and the pointer (`vm::pointer`) learn what the guest has taken.

use qapi::qmp;

use super::qmp::{Qmp, QmpError, Raw, RawName, VirtioQueueElement};

/// A virtio ring's free-running indices: buffers the guest has made available, and those the
/// device has used (both wrap at 2^16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingIndex {
    pub avail: u16,
    pub used: u16,
}

impl Qmp {
    /// A virtio queue's ring indices as the guest and device last wrote them (read from guest
    /// memory by the command). `device` is a QOM path such as
    /// `/machine/peripheral/kbd0/virtio-backend`.
    pub async fn virtio_ring(&self, device: &str, queue: u16) -> Result<RingIndex, QmpError> {
        let el = self
            .execute(Raw::<VirtioQueueElement>::new(
                serde_json::json!({ "path": device, "queue": queue }),
            ))
            .await?;
        let idx = |part: &str| el[part]["idx"].as_u64().map(|i| i as u16);
        match (idx("avail"), idx("used")) {
            (Some(avail), Some(used)) => Ok(RingIndex { avail, used }),
            _ => Err(QmpError::Command {
                command: VirtioQueueElement::NAME,
                message: format!("no avail/used index in the reply: {el}"),
            }),
        }
    }

    /// The name of `parent`'s first child of QOM type `ty` (such as
    /// `child<virtio-tablet-pci>`), if any.
    pub async fn find_child(&self, parent: &str, ty: &str) -> Result<Option<String>, QmpError> {
        let children = self
            .execute(qmp::qom_list {
                path: parent.into(),
            })
            .await?;
        Ok(children.into_iter().find(|c| c.type_ == ty).map(|c| c.name))
    }
}
