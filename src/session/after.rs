//! The frame after an action: captured in the background once the screen settles (or at a
//! limit, or when the next call arrives), so no call waits for it, and recorded as a `frame`
//! event of that action.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::lane::{Lane, Seen};
use super::{Session, SessionError};
use crate::ledger::Ledger;
use crate::vm::display::SETTLE_THRESHOLD_PX;

/// How long after an action its "after" frame may be taken, and how often the screen is looked
/// at until then (two equal looks in a row end it early).
const AFTER_LIMIT: Duration = Duration::from_millis(1500);
const AFTER_FIRST: Duration = Duration::from_millis(100);
/// Each look is a screendump that QEMU's main loop makes while the guest waits: few of them.
const AFTER_INTERVAL: Duration = Duration::from_millis(250);

/// The after-frame capture of one action, while it runs.
pub struct AfterFrame {
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl AfterFrame {
    /// Still looking at the screen for its action.
    pub fn running(&self) -> bool {
        !self.task.is_finished()
    }
}

/// Records `frame` as the screen after action `of_seq`, which ended at `ended`. A failed write
/// is logged: the action it shows is on record already, and no call waits for this.
pub(super) fn append_frame(
    ledger: &Ledger,
    of_seq: u64,
    seen: &Seen,
    settled: bool,
    ended: Instant,
) {
    let shot = ledger.shots.put(&seen.frame, &seen.hash);
    let fields = json!({
        "of_seq": of_seq,
        "shot": shot,
        "settled": settled,
        // When the frame was taken, not when it is written down.
        "ms_after": seen.at.saturating_duration_since(ended).as_millis() as u64,
    });
    if let Err(e) = ledger.append("frame", fields) {
        tracing::warn!(error = %e, "could not record a frame in the review ledger");
    }
}

impl Session {
    /// Tells a running after-frame capture to stop, without waiting for it.
    pub(super) fn cancel_capture(&self) {
        if let Some(p) = self.after.lock().expect("capture slot poisoned").take() {
            p.cancel.cancel();
        }
    }

    /// Stops a running after-frame capture (it records what it has) and waits for it; says
    /// whether there was one.
    pub(super) async fn finish_capture(&self) -> bool {
        let pending = self.after.lock().expect("capture slot poisoned").take();
        let Some(p) = pending else {
            return false;
        };
        p.cancel.cancel();
        let _ = p.task.await;
        true
    }
}

/// Captures the frame after action `of_seq` once the screen stopped changing (or at the limit,
/// or when the next call arrives) and records it as a `frame` event of that action.
pub fn spawn_after_frame(session: &Arc<Session>, of_seq: u64) {
    let cancel = CancellationToken::new();
    let (s, c) = (session.clone(), cancel.clone());
    let task = tokio::spawn(async move {
        let started = Instant::now();
        let mut last = None;
        let mut wait = AFTER_FIRST;
        let settled = loop {
            tokio::select! {
                _ = c.cancelled() => break false,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = AFTER_INTERVAL;
            let mut lane = s.lane.lock().await;
            if c.is_cancelled() {
                break false;
            }
            match look_again(&s, &mut lane, of_seq, &mut last).await {
                Some(true) => break true,
                Some(false) => {}
                None => break false,
            }
            drop(lane);
            if started.elapsed() >= AFTER_LIMIT {
                break false;
            }
        };
        if let Some(seen) = last {
            append_frame(&s.ledger, of_seq, &seen, settled, started);
        }
    });
    let previous = session
        .after
        .lock()
        .expect("capture slot poisoned")
        .replace(AfterFrame { cancel, task });
    if let Some(p) = previous {
        p.cancel.cancel();
    }
}

/// One look of an after-frame capture, kept in `last`: whether the screen is still (the same as
/// the look before), or `None` when the VM could not be looked at.
async fn look_again(
    s: &Session,
    lane: &mut Lane,
    of_seq: u64,
    last: &mut Option<Seen>,
) -> Option<bool> {
    let look = async { lane.look().await.map_err(SessionError::Vm) };
    let seen = s.unless_exited(look).await.ok()?;
    // This capture records the frame: later calls need not.
    lane.after_recorded(of_seq);
    // Equal hashes say "unchanged" without comparing 3 MB of pixels.
    let still = last.as_ref().is_some_and(|l: &Seen| {
        l.hash == seen.hash || seen.frame.changed_pixels(&l.frame) < SETTLE_THRESHOLD_PX
    });
    *last = Some(seen);
    if still {
        // The next action may reuse this frame as its "before".
        lane.mark_settled();
    }
    Some(still)
}
