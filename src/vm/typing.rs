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
//! Num Lock as it was (it changes only the keypad, which typing never uses). What a call
//! leaves unconfirmed (it failed, or its request was cancelled) the next call waits for first.
//!
//! Fallbacks, remembered per VM: a guest whose X never sets the LED (another keymap or X
//! driver) gets smaller bursts, each sent once the guest kernel has taken back every receive
//! buffer, plus a gap for X; a QEMU that cannot read the rings (before 7.2) gets fixed pauses.

use std::time::{Duration, Instant};

use super::input::{burst, Stroke};
use super::qmp::QmpError;
use super::rings::RingIndex;
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
/// Pause after each burst when the rings cannot be read: what typed without loss on PS/2.
const BLIND_PAUSE: Duration = Duration::from_millis(30);

const POLL: Duration = Duration::from_millis(2);
/// A guest that takes no key for this long has stopped: typing fails instead of dropping keys.
const STALL: Duration = Duration::from_secs(10);

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// No LED change seen yet in this VM.
    #[default]
    Unknown,
    /// X confirms each burst through the Num Lock LED.
    Confirmed,
    /// X sets no LED: the guest kernel's receive buffers pace typing.
    Received,
    /// The rings cannot be read over QMP: fixed pauses.
    Blind,
}

/// A VM's typing state, kept across calls.
#[derive(Debug, Default)]
pub struct Keyboard {
    mode: Mode,
    /// The status queue's used index once X has handled every tap sent.
    expected: Option<u16>,
    /// An odd number of taps sent: Num Lock is toggled until one more.
    odd: bool,
    /// Receive buffers the guest posts when idle (the most seen free).
    ring: u16,
    /// The guest's keymap given back after Unicode typing, until input waits for the window
    /// manager to take it in (`vm::unicode`).
    pub given_back: Option<super::unicode::GivenBack>,
}

impl Keyboard {
    fn tapped(&mut self) {
        self.odd = !self.odd;
        self.expected = self.expected.map(|e| e.wrapping_add(1));
    }

    /// X confirms every burst: once typing returns, X has handled every key.
    pub fn confirms(&self) -> bool {
        self.mode == Mode::Confirmed
    }

    fn taps(&self) -> bool {
        matches!(self.mode, Mode::Unknown | Mode::Confirmed)
    }
}

/// `index` has reached `target` (free-running u16 indices).
fn reached(index: u16, target: u16) -> bool {
    index.wrapping_sub(target) as i16 >= 0
}

impl Vm {
    /// Types strokes, each burst once X (or at least the guest kernel) took the last one.
    pub async fn type_strokes(&self, strokes: &[Stroke]) -> Result<(), VmError> {
        let mut kb = self.keyboard.lock().await;
        let total = strokes.len();
        let stalled = |typed| VmError::KeyboardStalled {
            typed,
            total,
            waited: STALL,
        };
        self.catch_up(&mut kb).await.map_err(|e| e.or(stalled(0)))?;
        let mut typed = 0;
        let mut rest = strokes;
        while !rest.is_empty() {
            let tapping = kb.taps();
            let budget = if tapping {
                BURST_EVENTS
            } else {
                UNCONFIRMED_BURST_EVENTS
            };
            let burst = burst(rest, budget);
            let mut events = key_events(burst);
            if tapping {
                events.extend(tap());
            }
            self.qmp.send_events(events).await?;
            if tapping {
                kb.tapped();
            }
            typed += burst.len();
            rest = &rest[burst.len()..];
            self.after_burst(&mut kb)
                .await
                .map_err(|e| e.or(stalled(typed)))?;
        }
        self.even_out(&mut kb)
            .await
            .map_err(|e| e.or(stalled(typed)))
    }

    /// Waits until X has handled every key sent so far, and every pointer report the guest has
    /// taken: a double Num Lock tap (Num Lock ends as it was) whose LED echo X sends only once
    /// it got to the tap. X reads the pointer and the keyboard as two devices, in the order
    /// the guest kernel queued their events, so a tap sent after the guest took a pointer
    /// report is handled after it. Without the LED: once the guest kernel has the keys.
    pub async fn confirm_keys(&self) -> Result<(), VmError> {
        let mut kb = self.keyboard.lock().await;
        let stalled = || VmError::InputUnconfirmed { waited: STALL };
        self.catch_up(&mut kb).await.map_err(|e| e.or(stalled()))?;
        let tapping = kb.taps();
        if tapping {
            let mut taps = tap().to_vec();
            taps.extend(tap());
            self.qmp.send_events(taps).await?;
            kb.tapped();
            kb.tapped();
        }
        self.after_burst(&mut kb).await.map_err(|e| e.or(stalled()))
    }

    /// Before a call: what earlier calls sent is handled, and the indices are current.
    async fn catch_up(&self, kb: &mut Keyboard) -> Result<(), Stall> {
        if kb.mode == Mode::Blind {
            return Ok(());
        }
        let Some(status) = self.ring(kb, STATUS_QUEUE).await? else {
            return Ok(());
        };
        let used = match kb.expected {
            Some(target) if !reached(status.used, target) => {
                self.echo(kb, target).await?;
                self.ring(kb, STATUS_QUEUE)
                    .await?
                    .map_or(target, |r| r.used)
            }
            _ => status.used,
        };
        // LED changes of keys pressed since (Caps Lock, say) are not ours to wait for.
        kb.expected = Some(used);
        if kb.mode == Mode::Received {
            if let Some(events) = self.ring(kb, EVENT_QUEUE).await? {
                kb.ring = kb.ring.max(events.avail.wrapping_sub(events.used));
            }
        }
        Ok(())
    }

    async fn after_burst(&self, kb: &mut Keyboard) -> Result<(), Stall> {
        match kb.mode {
            Mode::Unknown | Mode::Confirmed => {
                // None: the rings just became unreadable, and typing goes on blind.
                let Some(target) = kb.expected else {
                    return Ok(());
                };
                match self.echo(kb, target).await {
                    Ok(()) if kb.mode == Mode::Unknown => kb.mode = Mode::Confirmed,
                    Ok(()) => {}
                    Err(Stall::Timeout) if kb.mode == Mode::Unknown => {
                        tracing::warn!("X sets no keyboard LED; typing without its confirmation");
                        // Whatever X did with the tap, one more puts Num Lock back.
                        if kb.odd {
                            self.qmp.send_events(tap().to_vec()).await?;
                            kb.odd = false;
                        }
                        kb.mode = Mode::Received;
                        kb.expected = None;
                        // The guest has had 10 s to take the burst back: a full ring.
                        if let Some(r) = self.ring(kb, EVENT_QUEUE).await? {
                            kb.ring = kb.ring.max(r.avail.wrapping_sub(r.used));
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            Mode::Received => {
                self.received(kb).await?;
                tokio::time::sleep(UNCONFIRMED_GAP).await;
            }
            Mode::Blind => tokio::time::sleep(BLIND_PAUSE).await,
        }
        Ok(())
    }

    /// One more tap when an odd number left Num Lock toggled.
    async fn even_out(&self, kb: &mut Keyboard) -> Result<(), Stall> {
        if !kb.odd {
            return Ok(());
        }
        self.qmp.send_events(tap().to_vec()).await?;
        kb.tapped();
        match (kb.taps(), kb.expected) {
            (true, Some(target)) => self.echo(kb, target).await,
            _ => Ok(()),
        }
    }

    /// Waits until the status queue's used index reaches `target`.
    async fn echo(&self, kb: &mut Keyboard, target: u16) -> Result<(), Stall> {
        let start = Instant::now();
        loop {
            match self.ring(kb, STATUS_QUEUE).await? {
                Some(r) if !reached(r.used, target) => {}
                _ => return Ok(()),
            }
            if start.elapsed() > STALL {
                return Err(Stall::Timeout);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until the guest has posted every receive buffer again.
    async fn received(&self, kb: &mut Keyboard) -> Result<(), Stall> {
        let start = Instant::now();
        loop {
            let Some(r) = self.ring(kb, EVENT_QUEUE).await? else {
                return Ok(());
            };
            let free = r.avail.wrapping_sub(r.used);
            if free >= kb.ring.max(UNCONFIRMED_BURST_EVENTS as u16 + 1) {
                return Ok(());
            }
            if start.elapsed() > STALL {
                return Err(Stall::Timeout);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// A queue's indices; None (and typing blind from now on) when QEMU cannot read them.
    async fn ring(&self, kb: &mut Keyboard, queue: u16) -> Result<Option<RingIndex>, Stall> {
        match self.qmp.virtio_ring(KEYBOARD, queue).await {
            Ok(r) => Ok(Some(r)),
            Err(e @ QmpError::Command { .. }) => {
                tracing::warn!(error = %e, "cannot read the keyboard's rings; typing with fixed pauses");
                kb.mode = Mode::Blind;
                kb.expected = None;
                Ok(None)
            }
            Err(e) => Err(Stall::Vm(e.into())),
        }
    }
}

/// Why typing stopped: the guest took no key for [`STALL`], or the VM failed.
enum Stall {
    Timeout,
    Vm(VmError),
}

impl Stall {
    /// The VM's error, or `timeout` for a stall.
    fn or(self, timeout: VmError) -> VmError {
        match self {
            Stall::Timeout => timeout,
            Stall::Vm(e) => e,
        }
    }
}

impl From<QmpError> for Stall {
    fn from(e: QmpError) -> Self {
        Stall::Vm(e.into())
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

#[cfg(test)]
mod tests {
    use super::reached;

    #[test]
    fn indices_wrap() {
        assert!(reached(5, 5));
        assert!(reached(6, 5));
        assert!(!reached(4, 5));
        assert!(reached(2, 65_534));
        assert!(!reached(65_534, 2));
    }
}
