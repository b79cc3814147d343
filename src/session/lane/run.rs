//! What the lane does for each checked plan: one method per kind of plan, each saying in its
//! reply where it acted in the agent's screenshot coordinates.

use std::time::{Duration, Instant};

use super::{Lane, Seen};
use crate::session::action::{Outcome, Plan};
use crate::session::error::SessionError;
use crate::session::geometry::{Geometry, Trace};
use crate::vm::input::QCode;
use crate::vm::qga::QgaError;
use crate::vm::unicode::Piece;
use crate::vm::{Button, VmError};

/// A point as the agent's latest screenshot shows it, for replies.
fn in_shot(geometry: &Geometry, p: (u32, u32)) -> String {
    let q = geometry.in_shot(p);
    format!("({}, {})", q.x, q.y)
}

fn done(message: String) -> Outcome {
    Outcome::Done { message }
}

impl Lane {
    /// Runs a checked plan whose points [`Geometry::trace`] resolved; an action at wherever the
    /// pointer is gets that point written into `trace` (for the ledger).
    pub async fn run(
        &mut self,
        plan: Plan,
        trace: &mut Trace,
    ) -> Result<(Outcome, Option<Seen>), SessionError> {
        let at = *trace.pointer.get_or_insert(self.pointer);
        let geometry = *self.geometry.lock().expect("geometry poisoned");
        self.note_effects(&plan, at, trace);
        let outcome = match plan {
            Plan::Screenshot { scale, max_width } => {
                let (outcome, seen) = self.screenshot(scale, max_width).await?;
                return Ok((outcome, Some(seen)));
            }
            Plan::Zoom { scale, .. } => {
                let region = trace.region.expect("zoom regions are traced");
                let (outcome, seen) = self.zoom(region, scale).await?;
                return Ok((outcome, Some(seen)));
            }
            Plan::CursorPosition => Outcome::Cursor {
                at: geometry.in_shot(self.pointer),
                screen: self.pointer,
            },
            Plan::Click {
                button,
                count,
                modifiers,
                ..
            } => {
                self.vm.click(at.0, at.1, button, count, &modifiers).await?;
                self.pointer_input_sent();
                // A click releases the button, also one mouse_down held.
                self.held.retain(|b| *b != button);
                let at = in_shot(&geometry, at);
                done(format!("clicked {button:?} x{count} at {at}").to_lowercase())
            }
            Plan::MouseMove { .. } => {
                self.vm.move_to(at.0, at.1).await?;
                done(format!("pointer at {}", in_shot(&geometry, at)))
            }
            Plan::MouseButton { button, down, .. } => {
                self.mouse_button(at, button, down, &geometry).await?
            }
            Plan::Drag {
                button, modifiers, ..
            } => {
                let path = trace.path.clone().unwrap_or_default();
                self.drag(&path, button, &modifiers).await?;
                let first = path.first().copied().unwrap_or(at);
                done(format!(
                    "dragged from {} to {} through {} points",
                    in_shot(&geometry, first),
                    in_shot(&geometry, at),
                    path.len()
                ))
            }
            Plan::Scroll {
                dx, dy, modifiers, ..
            } => {
                self.vm.scroll(at.0, at.1, dx, dy, &modifiers).await?;
                done(format!(
                    "scrolled dx={dx} dy={dy} at {}",
                    in_shot(&geometry, at)
                ))
            }
            Plan::Type { pieces } => self.type_text(&pieces).await?,
            Plan::Key { combos, hold_ms } => self.keys(&combos, hold_ms).await?,
            Plan::Wait {
                ms,
                stable_timeout_ms,
            } => self.wait(ms, stable_timeout_ms).await?,
            Plan::Exec {
                command,
                timeout_ms,
                root,
            } => self.exec(&command, timeout_ms, root).await?,
        };
        Ok((outcome, None))
    }

    /// What a plan does to the lane's idea of the screen and the pointer, noted before it runs:
    /// input that fails half-way may still have changed the screen.
    fn note_effects(&mut self, plan: &Plan, at: (u32, u32), trace: &mut Trace) {
        // Hover and focus can change with any input; only looking and waiting cannot.
        let looks = matches!(
            plan,
            Plan::Screenshot { .. } | Plan::Zoom { .. } | Plan::CursorPosition | Plan::Wait { .. }
        );
        let moves_pointer = !looks
            && !matches!(
                plan,
                Plan::Type { .. } | Plan::Key { .. } | Plan::Exec { .. }
            );
        if !looks {
            self.changed_since_frame = true;
        }
        if moves_pointer {
            self.pointer = at;
        } else {
            trace.pointer = None;
        }
    }

    /// Input that a window manager's focus change may lag behind (see [`Lane::input_barrier`]).
    fn pointer_input_sent(&mut self) {
        self.last_pointer = Some(Instant::now());
    }

    /// A screenshot at `scale` (no wider than `max_width`): the agent's coordinates are in its
    /// space from now on.
    async fn screenshot(
        &mut self,
        scale: f64,
        max_width: Option<u32>,
    ) -> Result<(Outcome, Seen), SessionError> {
        let seen = self.look().await?;
        let s = match max_width {
            Some(mw) => scale.min(mw as f64 / seen.frame.width() as f64),
            None => scale,
        };
        let enc = seen.frame.png(s).map_err(VmError::from)?;
        *self.geometry.lock().expect("geometry poisoned") = Geometry {
            width: seen.frame.width(),
            height: seen.frame.height(),
            scale: s,
        };
        let outcome = Outcome::Screenshot {
            png: enc.png,
            width: enc.width,
            height: enc.height,
            scale: s,
        };
        Ok((outcome, seen))
    }

    /// A region of the screen in screen pixels, enlarged by `scale`; the agent's coordinates stay
    /// in the space of its latest screenshot.
    async fn zoom(
        &mut self,
        region: (u32, u32, u32, u32),
        scale: f64,
    ) -> Result<(Outcome, Seen), SessionError> {
        let seen = self.look().await?;
        let enc = seen
            .frame
            .region_png(region, scale)
            .map_err(VmError::from)?;
        let outcome = Outcome::Zoom {
            png: enc.png,
            width: enc.width,
            height: enc.height,
            region,
        };
        Ok((outcome, seen))
    }

    /// Presses or releases `button` at `at`; says which, whether it was already so, and what
    /// is still held.
    async fn mouse_button(
        &mut self,
        at: (u32, u32),
        button: Button,
        down: bool,
        geometry: &Geometry,
    ) -> Result<Outcome, SessionError> {
        self.vm.button(at.0, at.1, button, down).await?;
        self.pointer_input_sent();
        let was_held = self.held.contains(&button);
        self.held.retain(|b| *b != button);
        if down {
            self.held.push(button);
        }
        let name = format!("{button:?}").to_lowercase();
        let note = match (down, was_held) {
            (true, true) => " (it was already down)",
            (false, false) => " (it was not down)",
            _ => "",
        };
        let state = if down { "down" } else { "up" };
        let (at, held) = (in_shot(geometry, at), self.held_note());
        Ok(done(format!("{name} button {state} at {at}{note}{held}")))
    }

    /// The buttons still held, for a reply ("; held: left"), or nothing.
    fn held_note(&self) -> String {
        if self.held.is_empty() {
            return String::new();
        }
        let names: Vec<String> = self
            .held
            .iter()
            .map(|b| format!("{b:?}").to_lowercase())
            .collect();
        format!("; held: {}", names.join(", "))
    }

    async fn drag(
        &mut self,
        path: &[(u32, u32)],
        button: Button,
        modifiers: &[QCode],
    ) -> Result<(), SessionError> {
        self.vm.drag(path, button, modifiers).await?;
        self.pointer_input_sent();
        // The drag ends with the button up, also one mouse_down held.
        self.held.retain(|b| *b != button);
        Ok(())
    }

    async fn type_text(&mut self, pieces: &[Piece]) -> Result<Outcome, SessionError> {
        self.vm.type_pieces(pieces).await?;
        Ok(done(format!("typed {} characters", pieces.len())))
    }

    async fn keys(&mut self, combos: &[Vec<QCode>], hold_ms: u64) -> Result<Outcome, SessionError> {
        for c in combos {
            self.vm.combo(c, Duration::from_millis(hold_ms)).await?;
        }
        let held = if hold_ms > 0 {
            format!(", each held {hold_ms} ms")
        } else {
            String::new()
        };
        Ok(done(format!(
            "pressed {} key combination(s){held}",
            combos.len()
        )))
    }

    /// Runs a command in the guest; the caller's cancellation stops the wait for it (not the
    /// command, which the guest agent cannot kill).
    async fn exec(
        &mut self,
        command: &str,
        timeout_ms: u64,
        root: bool,
    ) -> Result<Outcome, SessionError> {
        if !self.guest.agent {
            return Err(SessionError::Unavailable {
                what: "exec",
                why: format!(
                    "no QEMU guest agent answers in image {} (install qemu-guest-agent in the guest and import it again)",
                    self.guest.image
                ),
            });
        }
        let script = match (&self.guest.user, root) {
            (Some(user), false) => as_user(user, command),
            _ => with_session_env(command),
        };
        let cancel = crate::session::Caller::current().cancel;
        let run = self
            .vm
            .exec_cancellable(&script, Duration::from_millis(timeout_ms), cancel.as_ref())
            .await;
        match run {
            Err(VmError::Qga(QgaError::Cancelled { ms })) => Err(SessionError::Cancelled {
                after_ms: ms,
                note: " (the command may still run in the guest)",
            }),
            other => Ok(Outcome::Exec(other?)),
        }
    }

    async fn wait(
        &mut self,
        ms: u64,
        stable_timeout_ms: Option<u64>,
    ) -> Result<Outcome, SessionError> {
        let started = Instant::now();
        let cancel = crate::session::Caller::current().cancel;
        let cancelled = async {
            match &cancel {
                Some(c) => c.cancelled().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
            _ = cancelled => {
                return Err(SessionError::Cancelled {
                    after_ms: started.elapsed().as_millis() as u64,
                    note: "",
                });
            }
        }
        let stable = match stable_timeout_ms {
            Some(t) => Some(
                self.settle(Duration::from_millis(t), Duration::from_millis(150), 3)
                    .await?,
            ),
            None => None,
        };
        Ok(Outcome::Waited {
            waited_ms: started.elapsed().as_millis() as u64,
            stable,
        })
    }
}

/// `command` run as the desktop's `user` with its session's environment (the guest's
/// `deskvm-as-user`, which every recipe image has).
pub(in crate::session) fn as_user(user: &str, command: &str) -> String {
    let quoted = command.replace('\'', "'\\''");
    format!("exec /usr/local/bin/deskvm-as-user /bin/sh -c '{quoted}' # as {user}")
}

/// `command` run as root with the session's variables (`/etc/deskvm/session.env`, where a
/// session's network puts its proxy), as `deskvm-as-user` gives a user's commands.
fn with_session_env(command: &str) -> String {
    format!("if [ -r /etc/deskvm/session.env ]; then set -a; . /etc/deskvm/session.env; set +a; fi\n{command}")
}

#[cfg(test)]
mod as_user_tests {
    #[test]
    fn a_command_with_quotes_survives_the_wrapper() {
        let s = super::as_user("user", "echo 'a b' \"c\"");
        assert_eq!(
            s,
            "exec /usr/local/bin/deskvm-as-user /bin/sh -c 'echo '\\''a b'\\'' \"c\"' # as user"
        );
    }
}
