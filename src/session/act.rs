//! `Session::act`: one agent action on the lane, on record. Validation before the lane, the
//! lane run, and the ledger event with the frames before and after — the before frame chosen
//! on the call's path (usually the latest frame, free), the after frame captured in the
//! background once the screen settles (`after`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::MutexGuard;

use super::action::{Action, Outcome, Plan};
use super::after::{append_frame, spawn_after_frame};
use super::geometry::Trace;
use super::lane::{Lane, Seen};
use super::ledgers::{append_call, Extra};
use super::{Session, SessionError, SessionManager};

/// What the lane gave back: the outcome, and the frame it showed the agent (if any).
type Ran = Result<(Outcome, Option<Seen>), SessionError>;

impl SessionManager {
    pub async fn act(&self, id: &str, action: Action) -> Result<Outcome, SessionError> {
        let started = Instant::now();
        let session = self
            .session_for(action.name(), id, &action.record(), started)
            .await?;
        session.act(action, started).await
    }
}

impl Session {
    /// Restarts the idle timeout's clock: a tool call, or a person using the desktop.
    pub fn touch(&self) {
        *self.last_call.lock().expect("clock poisoned") = Instant::now();
    }

    /// Runs one action on the lane and records it. Refusals are recorded before any lock.
    pub(super) async fn act(
        self: &Arc<Self>,
        action: Action,
        started: Instant,
    ) -> Result<Outcome, SessionError> {
        self.touch();
        let (tool, args) = (action.name(), action.record());
        let secret = action.is_secret();
        let (trace, plan) = match self.check(&action) {
            Ok(checked) => checked,
            Err(e) => return Err(self.refuse(tool, args, e, secret, started)),
        };
        // A person's input through a control view goes on record ahead of this call.
        self.record_pending_human();
        let (mut lane, mut overhead) = self.take_lane().await;
        let mut extra = Extra {
            trace,
            secret,
            ..Extra::default()
        };
        let changes_screen = action.changes_screen();
        let ran = self
            .run_on(&mut lane, plan, changes_screen, &mut extra, &mut overhead)
            .await;
        let result = self.explain_vm_error(ran).await;
        let t = Instant::now();
        // The previous action's capture took no frame: the first frame of this call shows the
        // screen after it.
        if let Some((seq, ended, seen)) = lane.take_awaiting_after(started) {
            append_frame(&self.ledger, seq, &seen, seen.settled, ended);
        }
        let recorded = self.record_call(tool, args, &result, started, &mut extra);
        if let (Ok(seq), Ok(_), true) = (&recorded, &result, changes_screen) {
            // Installed before the lane is free, so the next call always finds it.
            lane.await_after(*seq);
            spawn_after_frame(self, *seq);
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

    /// The action checked into a plan, its points resolved on the screen. Coordinates are in
    /// the space of the latest screenshot this session answered: the only one the agent can
    /// have seen when it sent them.
    fn check(&self, action: &Action) -> Result<(Trace, Plan), SessionError> {
        let geometry = *self.geometry.lock().expect("geometry poisoned");
        let plan = action.validate()?;
        self.check_alive()?;
        Ok((geometry.trace(&plan)?, plan))
    }

    /// Records a call refused before it reached the lane, and gives its error back. A failed
    /// write is logged: the refusal is what the agent must hear.
    fn refuse(
        &self,
        tool: &str,
        args: Value,
        e: SessionError,
        secret: bool,
        started: Instant,
    ) -> SessionError {
        let extra = Extra {
            secret,
            ..Extra::default()
        };
        if let Err(le) = append_call(&self.ledger, "", tool, args, Err(&e), started, &extra) {
            tracing::error!(error = %le, tool, "could not record a refused call in the review ledger");
        }
        e
    }

    /// The lane, with what a person did since the last call taken into account; and how long
    /// the previous action's after-frame capture held this call up (the ledger's overhead).
    async fn take_lane(&self) -> (MutexGuard<'_, Lane>, Duration) {
        // The previous action's after-frame capture yields to this call: it stops looking and
        // records the last frame it took.
        let waited_for_capture = Instant::now();
        let had_capture = self.finish_capture().await;
        let mut lane = self.lane.lock().await;
        if let Some(pointer) = self.viewers.human.take_touched() {
            // The screen may have changed, and the pointer moved, without the lane knowing.
            lane.note_human_input(pointer);
        }
        // A capture that a call ahead of this one started while this one queued: it stops at
        // once (it cannot look any more: this call holds the lane) and keeps what it took.
        self.cancel_capture();
        let overhead = if had_capture {
            waited_for_capture.elapsed()
        } else {
            Duration::ZERO
        };
        (lane, overhead)
    }

    /// Runs the plan on the lane unless the VM exits first. An action that can change the
    /// screen gets its "before" frame first (the time that takes is the ledger's overhead).
    async fn run_on(
        &self,
        lane: &mut Lane,
        plan: Plan,
        changes_screen: bool,
        extra: &mut Extra,
        overhead: &mut Duration,
    ) -> Ran {
        self.unless_exited(async {
            lane.before(&plan).await?;
            if changes_screen {
                let t = Instant::now();
                let seen = lane.current().await?;
                extra.before = Some(self.ledger.shots.put(&seen.frame, &seen.hash));
                *overhead += t.elapsed();
            }
            lane.run(plan, &mut extra.trace).await
        })
        .await
    }

    /// A VM error is most often the VM dying mid-call: say that rather than "broken pipe".
    /// A lost connection is seen before the backend reports the exit (a container's takes its
    /// engine a while): wait for the exit reason a little longer then.
    async fn explain_vm_error(&self, ran: Ran) -> Ran {
        let e = match ran {
            Err(SessionError::Vm(e)) => e,
            other => return other,
        };
        let wait = if e.is_connection_lost() {
            Duration::from_secs(3)
        } else {
            Duration::from_millis(50)
        };
        let mut exited = self.exited();
        let _ = tokio::time::timeout(wait, exited.wait_for(Option::is_some)).await;
        self.check_alive().and(Err(SessionError::Vm(e)))
    }

    /// Writes the call's event, with the frame it showed the agent (if any).
    fn record_call(
        &self,
        tool: &str,
        args: Value,
        result: &Ran,
        started: Instant,
        extra: &mut Extra,
    ) -> std::io::Result<u64> {
        match result {
            Ok((outcome, shown)) => {
                if let Some(seen) = shown {
                    extra.shot = Some(self.ledger.shots.put(&seen.frame, &seen.hash));
                }
                let outcome = outcome.to_json();
                append_call(&self.ledger, "", tool, args, Ok(&outcome), started, extra)
            }
            Err(e) => append_call(&self.ledger, "", tool, args, Err(e), started, extra),
        }
    }
}
