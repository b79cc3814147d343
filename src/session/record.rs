//! A session call on record: validation before the lane, the lane run, and the ledger event
//! with the frames before and after — the before frame chosen on the call's path (usually the
//! latest frame, free), the after frame captured in the background once the screen settles.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::action::{Action, Outcome};
use super::geometry::Trace;
use super::lane::Seen;
use super::{Session, SessionError};
use crate::ledger::{redact, Ledger};
use crate::vm::display::SETTLE_THRESHOLD_PX;

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

/// What the ledger keeps of a call besides tool, arguments and outcome.
#[derive(Default)]
pub struct Extra {
    pub trace: Trace,
    pub before: Option<String>,
    pub shot: Option<String>,
    /// The call carried a secret: an error message, which may quote the input, is withheld.
    pub secret: bool,
}

/// How long after an action its "after" frame may be taken, and how often the screen is looked
/// at until then (two equal looks in a row end it early).
const AFTER_LIMIT: Duration = Duration::from_millis(1500);
const AFTER_FIRST: Duration = Duration::from_millis(100);
/// Each look is a screendump that QEMU's main loop makes while the guest waits: few of them.
const AFTER_INTERVAL: Duration = Duration::from_millis(250);

/// Appends a call's event: `kind` (or `action`/`action_failed` when empty), tool, arguments,
/// outcome or error, duration, pointer and frames.
pub fn append_call(
    ledger: &Ledger,
    kind: &str,
    tool: &str,
    args: Value,
    outcome: Result<&Value, &SessionError>,
    started: Instant,
    extra: &Extra,
) -> std::io::Result<u64> {
    let kind = match (kind, &outcome) {
        ("", Ok(_)) => "action",
        ("", Err(_)) => "action_failed",
        (k, _) => k,
    };
    let (outcome, error) = match outcome {
        Ok(v) => (Some(redact::outcome(v)), None),
        Err(e) if extra.secret => (
            None,
            Some(
                json!({ "error": e.kind(), "message": "withheld from the review: it could quote the secret text" }),
            ),
        ),
        Err(e) => (None, Some(e.to_json())),
    };
    let xy = |(x, y): (u32, u32)| json!({ "x": x, "y": y });
    // Arguments left out are left out of the record too.
    let args = match args {
        Value::Object(m) => Value::Object(m.into_iter().filter(|(_, v)| !v.is_null()).collect()),
        other => other,
    };
    ledger.append(
        kind,
        json!({
            "tool": tool,
            "args": args,
            "outcome": outcome,
            "error": error,
            "duration_ms": started.elapsed().as_millis() as u64,
            "pointer": extra.trace.pointer.map(xy),
            "path": extra.trace.path.as_ref().map(|p| p.iter().copied().map(xy).collect::<Vec<_>>()),
            "region": extra.trace.region.map(|(x, y, w, h)| json!({ "x": x, "y": y, "width": w, "height": h })),
            "before": extra.before,
            "shot": extra.shot,
        }),
    )
}

/// Records `frame` as the screen after action `of_seq`, which ended at `ended`.
fn append_frame(ledger: &Ledger, of_seq: u64, seen: &Seen, settled: bool, ended: Instant) {
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

/// Records a call refused before any handler ran: `args` as the client sent them (redacted).
pub fn append_refused(ledger: &Ledger, tool: &str, raw_args: &Value, message: &str) {
    let args = redact::raw_args(raw_args);
    let extra = Extra {
        secret: redact::has_secret(raw_args),
        ..Extra::default()
    };
    let e = SessionError::InvalidParams(message.to_string());
    if let Err(e) = append_call(ledger, "", tool, args, Err(&e), Instant::now(), &extra) {
        tracing::error!(error = %e, tool, "could not record a refused call in the review ledger");
    }
}

impl Session {
    pub(super) fn record_ok(
        &self,
        kind: &str,
        tool: &str,
        args: Value,
        outcome: Value,
        started: Instant,
    ) -> Result<u64, SessionError> {
        append_call(
            &self.ledger,
            kind,
            tool,
            args,
            Ok(&outcome),
            started,
            &Extra::default(),
        )
        .map_err(SessionError::Ledger)
    }

    /// Ends the VM and removes the runtime dir (the ledger stays).
    pub(super) async fn end(&self) -> Result<(), crate::storage::IoError> {
        // Viewers go first: no person's input reaches a VM being stopped, and what they did
        // is on record before the stop is.
        self.viewers.close();
        self.record_pending_human();
        self.finish_capture().await;
        let mut lane = self.lane.lock().await;
        if self.check_alive().is_ok() {
            lane.vm.qmp().quit().await;
        }
        lane.instance.stop().await;
        crate::storage::remove_session_dirs(&self.files)
    }

    /// After the last event: frames on disk, the ledger's state final.
    pub(super) async fn close_ledger(&self) {
        self.ledger.shots.flush().await;
        let failed = self.failed();
        let _ = self.ledger.update_meta(|m| {
            m.state = if failed { "failed" } else { "stopped" }.into();
            m.ended_at = Some(crate::ledger::now());
        });
    }

    /// Restarts the idle timeout's clock: a tool call, or a person using the desktop.
    pub fn touch(&self) {
        *self.last_call.lock().expect("clock poisoned") = Instant::now();
    }

    /// Tells a running after-frame capture to stop, without waiting for it.
    fn cancel_capture(&self) {
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

    /// Runs one action on the lane and records it. Refusals are recorded before any lock.
    pub(super) async fn act(
        self: &Arc<Self>,
        action: Action,
        started: Instant,
    ) -> Result<Outcome, SessionError> {
        self.touch();
        let (tool, args) = (action.name(), action.record());
        let refuse = |e: SessionError, extra: &Extra| {
            let recorded = append_call(
                &self.ledger,
                "",
                tool,
                args.clone(),
                Err(&e),
                started,
                extra,
            );
            if let Err(le) = recorded {
                tracing::error!(error = %le, tool, "could not record a refused call in the review ledger");
            }
            Err(e)
        };
        // Coordinates are in the space of the latest screenshot this session answered: the only
        // one the agent can have seen when it sent them.
        let geometry = *self.geometry.lock().expect("geometry poisoned");
        let checked = action.validate().and_then(|plan| {
            self.check_alive()?;
            Ok((geometry.trace(&plan)?, plan))
        });
        let secret = action.is_secret();
        let (trace, plan) = match checked {
            Ok(c) => c,
            Err(e) => {
                return refuse(
                    e,
                    &Extra {
                        secret,
                        ..Extra::default()
                    },
                )
            }
        };
        // A person's input through a control view goes on record ahead of this call.
        self.record_pending_human();
        // The previous action's after-frame capture yields to this call: it stops looking and
        // records the last frame it took.
        let waited_for_capture = Instant::now();
        let had_capture = self.finish_capture().await;
        let mut lane = self.lane.lock().await;
        if let Some(pointer) = self.viewers.human.take_touched() {
            // The screen may have changed, and the pointer moved, without the lane knowing.
            lane.changed_since_frame = true;
            if let Some((x, y)) = pointer {
                lane.pointer = (x as u32, y as u32);
            }
        }
        // A capture that a call ahead of this one started while this one queued: it stops at
        // once (it cannot look any more: this call holds the lane) and keeps what it took.
        self.cancel_capture();
        let mut overhead = if had_capture {
            waited_for_capture.elapsed()
        } else {
            Duration::ZERO
        };
        let mut extra = Extra {
            trace,
            secret,
            ..Extra::default()
        };
        let ran = self
            .unless_exited(async {
                lane.before(&plan).await?;
                if action.changes_screen() {
                    let t = Instant::now();
                    let seen = lane.current().await?;
                    extra.before = Some(self.ledger.shots.put(&seen.frame, &seen.hash));
                    overhead += t.elapsed();
                }
                lane.run(plan, &mut extra.trace).await
            })
            .await;
        // A VM error is most often the VM dying mid-call: say that rather than "broken pipe".
        // A lost connection is seen before the backend reports the exit (a container's takes
        // its engine a while): wait for the exit reason a little longer then.
        let result = match ran {
            Err(SessionError::Vm(e)) => {
                let wait = if e.is_connection_lost() {
                    Duration::from_secs(3)
                } else {
                    Duration::from_millis(50)
                };
                let mut exited = self.exited();
                let _ = tokio::time::timeout(wait, exited.wait_for(Option::is_some)).await;
                self.check_alive().and(Err(SessionError::Vm(e)))
            }
            other => other,
        };
        let t = Instant::now();
        // The previous action's capture took no frame: the first frame of this call shows the
        // screen after it.
        let fresh = lane.latest.clone().filter(|s| s.at >= started);
        if let (Some((seq, ended)), Some(seen)) = (lane.awaiting_after, fresh) {
            append_frame(&self.ledger, seq, &seen, seen.settled, ended);
            lane.awaiting_after = None;
        }
        let recorded = match &result {
            Ok((outcome, shown)) => {
                if let Some(seen) = shown {
                    extra.shot = Some(self.ledger.shots.put(&seen.frame, &seen.hash));
                }
                append_call(
                    &self.ledger,
                    "",
                    tool,
                    args,
                    Ok(&outcome.to_json()),
                    started,
                    &extra,
                )
            }
            Err(e) => append_call(&self.ledger, "", tool, args, Err(e), started, &extra),
        };
        let capture = match (&recorded, &result) {
            (Ok(seq), Ok(_)) if action.changes_screen() => Some(*seq),
            _ => None,
        };
        if let Some(seq) = capture {
            // Installed before the lane is free, so the next call always finds it.
            lane.awaiting_after = Some((seq, Instant::now()));
            spawn_after_frame(self, seq);
        }
        drop(lane);
        overhead += t.elapsed();
        self.ledger.note_overhead(overhead);
        self.touch();
        if let Err(e) = recorded {
            // The action ran: failing the call now would make an agent repeat it.
            tracing::error!(error = %e, session = %self.info.session_id, tool, "could not record a call in the review ledger");
        }
        result.map(|(outcome, _)| outcome)
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
            let look = async { lane.look().await.map_err(SessionError::Vm) };
            let Ok(seen) = s.unless_exited(look).await else {
                break false;
            };
            // This capture records the frame: later calls need not.
            if lane.awaiting_after.is_some_and(|(seq, _)| seq == of_seq) {
                lane.awaiting_after = None;
            }
            // Equal hashes say "unchanged" without comparing 3 MB of pixels.
            let still = last.as_ref().is_some_and(|l: &Seen| {
                l.hash == seen.hash || seen.frame.changed_pixels(&l.frame) < SETTLE_THRESHOLD_PX
            });
            last = Some(seen);
            if still {
                // The next action may reuse this frame as its "before".
                if let Some(l) = lane.latest.as_mut() {
                    l.settled = true;
                }
                break true;
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
