//! Typing at X's pace: each burst of keys is confirmed by X before the next is sent.
//!
//! Keys go to a virtio keyboard (`kbd0`; QEMU routes keys to it once the guest driver is up).
//! Two queues on the way to X drop keys, both whole batches at a time:
//! - QEMU hands a batch of events to the guest only if the guest has posted a receive buffer
//!   for each (64 in the ring), and drops the batch otherwise;
//! - the guest kernel queues them in evdev's 64-event buffer for X's input thread, and on
//!   overflow evdev drops what is queued (`SYN_DROPPED`).
//!
//! Fixed pauses cannot make that safe: when the host is busy a vCPU, and X with it, can stall
//! for longer than any pause (the PS/2 keyboard this replaces typed ~145 chars/s with 30 ms
//! pauses, and lost keys beside two CPU hogs). So every burst ends with a Num Lock tap. When X
//! has processed it — and so every key before it — X sets the keyboard's Num Lock LED, which
//! the guest sends back on the keyboard's status queue; QMP reads that queue's index
//! (`x-query-virtio-queue-element`, ~1 ms). The next burst goes only then, so neither queue
//! ever holds more than one burst. An odd number of taps gets one more at the end, leaving
//! Num Lock as it was (it changes only the keypad, which typing never uses).
//!
//! Where X sends no LED (another keymap or X driver), typing falls back to waiting for the
//! guest to take back the receive buffers of the last burst, with smaller bursts and a gap.

use std::time::{Duration, Instant};

use super::input::{bursts, Stroke};
use super::qmp::RingIndex;
use super::{key_event, Vm, VmError};

/// The virtio keyboard's QOM path (`-device virtio-keyboard-pci,id=kbd0`).
pub const KEYBOARD: &str = "/machine/peripheral/kbd0/virtio-backend";
const EVENT_QUEUE: u16 = 0;
const STATUS_QUEUE: u16 = 1;

/// Key events per confirmed burst: with the tap, the sync reports the input core inserts (one
/// per 8 events) and QEMU's own, one burst fits evdev's buffer and the 64 receive buffers.
pub const BURST_EVENTS: usize = 44;
/// Key events per burst when X does not confirm: two bursts fit evdev's buffer.
const UNCONFIRMED_BURST_EVENTS: usize = 24;
/// Pause after an unconfirmed burst, for X's input thread.
const UNCONFIRMED_GAP: Duration = Duration::from_millis(5);

const POLL: Duration = Duration::from_millis(2);
/// How long the first burst's LED may take before typing goes on unconfirmed.
const FIRST_ECHO: Duration = Duration::from_secs(2);
/// A guest that takes no key for this long has stopped: typing fails instead of dropping keys.
const STALL: Duration = Duration::from_secs(10);

enum Flow {
    /// X confirms each burst; `taps` Num Lock taps sent since `base` (the status queue's used
    /// index before the first).
    Confirmed { base: u16, taps: u16 },
    /// The guest kernel confirms each burst (all receive buffers back); X does not.
    Received,
}

impl Vm {
    /// Types strokes, each burst once X (or at least the guest kernel) took the last one.
    pub async fn type_strokes(&self, strokes: &[Stroke]) -> Result<(), VmError> {
        let base = self.qmp.virtio_ring(KEYBOARD, STATUS_QUEUE).await?.used;
        let mut flow = Flow::Confirmed { base, taps: 0 };
        let mut typed = 0;
        let mut rest = strokes;
        while !rest.is_empty() {
            let budget = match flow {
                Flow::Confirmed { .. } => BURST_EVENTS,
                Flow::Received => UNCONFIRMED_BURST_EVENTS,
            };
            let burst = bursts(rest, budget)[0];
            let mut events = key_events(burst);
            if let Flow::Confirmed { .. } = flow {
                events.extend(tap());
            }
            self.qmp.send_events(events).await?;
            typed += burst.len();
            rest = &rest[burst.len()..];
            let progress = Progress {
                typed,
                total: strokes.len(),
            };
            match &mut flow {
                Flow::Confirmed { base, taps } => {
                    *taps = taps.wrapping_add(1);
                    let first = *taps == 1;
                    let wait = if first { FIRST_ECHO } else { STALL };
                    if !self.echoed(*base, *taps, wait).await? {
                        if !first {
                            return Err(progress.stalled());
                        }
                        tracing::warn!(
                            "X does not set the keyboard LEDs; typing without its confirmation"
                        );
                        flow = Flow::Received;
                    }
                }
                Flow::Received => {
                    self.received(progress).await?;
                    tokio::time::sleep(UNCONFIRMED_GAP).await;
                }
            }
        }
        if let Flow::Confirmed { base, taps } = flow {
            if taps % 2 == 1 {
                self.qmp.send_events(tap().to_vec()).await?;
                if !self.echoed(base, taps.wrapping_add(1), STALL).await? {
                    return Err(Progress {
                        typed,
                        total: strokes.len(),
                    }
                    .stalled());
                }
            }
        }
        Ok(())
    }

    /// Waits until the status queue shows `taps` LED changes since `base`; false after `wait`.
    async fn echoed(&self, base: u16, taps: u16, wait: Duration) -> Result<bool, VmError> {
        let start = Instant::now();
        loop {
            let RingIndex { used, .. } = self.qmp.virtio_ring(KEYBOARD, STATUS_QUEUE).await?;
            if used.wrapping_sub(base) >= taps {
                return Ok(true);
            }
            if start.elapsed() > wait {
                return Ok(false);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until the guest has posted every receive buffer again (the most seen free).
    async fn received(&self, progress: Progress) -> Result<(), VmError> {
        let start = Instant::now();
        let mut full = 0;
        loop {
            let ring = self.qmp.virtio_ring(KEYBOARD, EVENT_QUEUE).await?;
            let free = ring.avail.wrapping_sub(ring.used);
            // A ring this full has room for a burst; the guest posts 64 when idle.
            full = full.max(free);
            if free >= full && usize::from(free) > UNCONFIRMED_BURST_EVENTS {
                return Ok(());
            }
            if start.elapsed() > STALL {
                return Err(progress.stalled());
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

#[derive(Clone, Copy)]
struct Progress {
    typed: usize,
    total: usize,
}

impl Progress {
    fn stalled(self) -> VmError {
        VmError::KeyboardStalled {
            typed: self.typed,
            total: self.total,
            waited: STALL,
        }
    }
}

fn key_events(burst: &[Stroke]) -> Vec<qapi::qmp::InputEvent> {
    let mut events = Vec::with_capacity(burst.len() * 4 + 2);
    for s in burst {
        if s.shift {
            events.push(key_event("shift", true));
        }
        events.push(key_event(s.key, true));
        events.push(key_event(s.key, false));
        if s.shift {
            events.push(key_event("shift", false));
        }
    }
    events
}

fn tap() -> [qapi::qmp::InputEvent; 2] {
    [key_event("num_lock", true), key_event("num_lock", false)]
}
