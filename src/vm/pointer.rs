//! Pointer input at the guest's pace: every tablet report goes only when the guest has a
//! receive buffer for each of its events, and the next goes only once the guest has taken it.
//!
//! Three things lost or reordered pointer input on a busy host (tests/e2e_actions.rs beside
//! two CPU hogs):
//! - QEMU hands a tablet report to the guest only if the guest has posted a receive buffer
//!   for each of its events (64 in the ring), and drops the whole report otherwise
//!   (`virtio_input_send`). Host-side pauses cannot know when the guest refills them, so each
//!   report waits for room and then until the guest has taken it back (its ring indices, read
//!   over QMP like the keyboard's in `vm::typing`). Pauses between reports (a click's hold,
//!   the gap before a second click) then count from when the guest took the report, so they
//!   hold in guest time too (libinput filters a release and press closer than 25 ms as a
//!   bouncing button).
//! - Window managers and toolkits merge the motion events queued for them into one
//!   (openbox: `event_hack_mods`). Openbox starts a window move on the first motion after a
//!   press, from the press position, and moves the window on later motions only. When it is
//!   busy (a keymap upload makes it grab every binding again for seconds under load) the
//!   whole path waits in its queue, the first motion swallows the rest, and the release ends
//!   a move that never moved: the lost drag (measured: 6 of 10 drags after Unicode typing
//!   beside two hogs; evdev in the guest showed every event arrive). So the first motion after
//!   a press waits until the guest is idle, i.e. every client has handled what it was sent,
//!   before the rest of the path goes.
//! - Keys (modifiers) and the pointer are two devices the guest reads independently: a
//!   modified click waits for X to confirm the modifiers before the click, and the click
//!   before releasing them (`Vm::confirm_keys`).

use std::time::{Duration, Instant};

use qapi::qmp::InputEvent;

use super::qmp::QmpError;
use super::rings::RingIndex;
use super::{Vm, VmError};

/// The virtio tablet's QOM parent: it has no id (one would change the machine and so every
/// saved state's key), so it is found among the anonymous devices by its type.
const ANONYMOUS: &str = "/machine/peripheral-anon";
const TABLET_TYPE: &str = "child<virtio-tablet-pci>";
const EVENT_QUEUE: u16 = 0;

const POLL: Duration = Duration::from_millis(1);
/// A guest that takes no pointer report for this long has stopped.
const STALL: Duration = Duration::from_secs(10);
/// Pause after each report when the rings cannot be read (what paced pointer input before).
const BLIND_PAUSE: Duration = Duration::from_millis(20);

/// The guest counts as idle after samples in a row in which its CPUs were busy for less than
/// a quarter of one CPU's time: a client still handling input keeps one CPU busy.
const IDLE_SAMPLE: Duration = Duration::from_millis(40);
const IDLE_SAMPLES: u32 = 2;
/// Longest wait for an idle guest; a guest busy with its own work gets the rest of the path
/// after it (as before this wait existed).
const IDLE_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
enum Ring {
    /// Not looked up yet.
    #[default]
    Unknown,
    /// The tablet's virtio backend.
    Found(String),
    /// No tablet, or QEMU cannot read rings: fixed pauses.
    Blind,
}

/// A VM's pointer state, kept across calls.
#[derive(Debug, Default)]
pub struct Tablet {
    ring: Ring,
    /// Receive buffers the guest posts when idle (the most seen free).
    full: u16,
    /// A button went down and no motion has followed yet.
    pressed: bool,
    /// The guest agent cannot report CPU times: no idle waits.
    no_idle: bool,
}

impl Vm {
    /// Sends one tablet report (events up to QEMU's sync) once the guest has room for it, and
    /// returns when the guest has taken it.
    pub(super) async fn report(&self, events: Vec<InputEvent>) -> Result<(), VmError> {
        let mut tablet = self.tablet.lock().await;
        let n = events.len() as u16 + 1; // QEMU appends SYN_REPORT
        let path = match self.tablet_ring(&mut tablet).await? {
            Some(p) => p,
            None => {
                self.qmp.send_events(events).await?;
                tokio::time::sleep(BLIND_PAUSE).await;
                return Ok(());
            }
        };
        let start = Instant::now();
        loop {
            let Some(r) = self.read_ring(&mut tablet, &path).await? else {
                break;
            };
            let free = r.avail.wrapping_sub(r.used);
            tablet.full = tablet.full.max(free);
            if free >= n {
                break;
            }
            stalled(start)?;
            tokio::time::sleep(POLL).await;
        }
        self.qmp.send_events(events).await?;
        let start = Instant::now();
        loop {
            let Some(r) = self.read_ring(&mut tablet, &path).await? else {
                tokio::time::sleep(BLIND_PAUSE).await;
                return Ok(());
            };
            if r.avail.wrapping_sub(r.used) >= tablet.full {
                return Ok(());
            }
            stalled(start)?;
            tokio::time::sleep(POLL).await;
        }
    }

    /// Notes a button change: the next motion after a press is the one drags start on.
    pub(super) async fn pressed(&self, down: bool) {
        self.tablet.lock().await.pressed = down;
    }

    /// After a motion: when it was the first since a press, waits until the guest has handled
    /// it (is idle) so that later motions reach the program as motions of their own.
    pub(super) async fn after_motion(&self) -> Result<(), VmError> {
        let mut tablet = self.tablet.lock().await;
        if !std::mem::take(&mut tablet.pressed) || tablet.no_idle {
            return Ok(());
        }
        let start = Instant::now();
        match self.guest_idle().await {
            Ok(idle) => tracing::debug!(
                idle,
                ms = start.elapsed().as_millis() as u64,
                "waited for the guest after a drag's first motion"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the guest's CPU times; drags go unpaced");
                tablet.no_idle = true;
            }
        }
        Ok(())
    }

    /// Waits (at most [`IDLE_WAIT`]) until the guest's CPUs are idle over [`IDLE_SAMPLES`]
    /// samples in a row; false when they never were.
    async fn guest_idle(&self) -> Result<bool, VmError> {
        let agent = self.agent(Duration::from_secs(5)).await?;
        let start = Instant::now();
        let mut last = agent.cpu_times().await?;
        let mut quiet = 0;
        while start.elapsed() < IDLE_WAIT {
            tokio::time::sleep(IDLE_SAMPLE).await;
            let now = agent.cpu_times().await?;
            let busy = now.busy_ms.saturating_sub(last.busy_ms);
            let all = now.all_ms.saturating_sub(last.all_ms);
            let cpus = u64::from(now.cpus.max(1));
            // A sample with too few ticks accounted says nothing (a vCPU the host did not run
            // accounts late): it grows until it has them.
            if all < cpus * IDLE_SAMPLE.as_millis() as u64 {
                continue;
            }
            // Each CPU accounted `all / cpus` ms; idle when under a quarter of one was busy.
            quiet = if busy * 4 * cpus < all { quiet + 1 } else { 0 };
            if quiet >= IDLE_SAMPLES {
                return Ok(true);
            }
            last = now;
        }
        Ok(false)
    }

    /// The tablet's ring path, looked up once; None when the rings cannot be read.
    async fn tablet_ring(&self, tablet: &mut Tablet) -> Result<Option<String>, VmError> {
        if let Ring::Unknown = tablet.ring {
            tablet.ring = match self.qmp.find_child(ANONYMOUS, TABLET_TYPE).await {
                Ok(Some(dev)) => Ring::Found(format!("{ANONYMOUS}/{dev}/virtio-backend")),
                Ok(None) => {
                    tracing::warn!("no virtio tablet found; pointer input with fixed pauses");
                    Ring::Blind
                }
                Err(e @ QmpError::Command { .. }) => {
                    tracing::warn!(error = %e, "cannot list devices; pointer input with fixed pauses");
                    Ring::Blind
                }
                Err(e) => return Err(e.into()),
            };
        }
        Ok(match &tablet.ring {
            Ring::Found(p) => Some(p.clone()),
            _ => None,
        })
    }

    /// The ring's indices; None (and fixed pauses from now on) when QEMU cannot read them.
    async fn read_ring(
        &self,
        tablet: &mut Tablet,
        path: &str,
    ) -> Result<Option<RingIndex>, VmError> {
        match self.qmp.virtio_ring(path, EVENT_QUEUE).await {
            Ok(r) => Ok(Some(r)),
            Err(e @ QmpError::Command { .. }) => {
                tracing::warn!(error = %e, "cannot read the tablet's rings; pointer input with fixed pauses");
                tablet.ring = Ring::Blind;
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }
}

fn stalled(start: Instant) -> Result<(), VmError> {
    if start.elapsed() > STALL {
        Err(VmError::PointerStalled { waited: STALL })
    } else {
        Ok(())
    }
}
