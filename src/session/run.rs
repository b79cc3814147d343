//! What the lane does for each checked plan.

use std::time::{Duration, Instant};

use super::action::{Outcome, Plan};
use super::error::SessionError;
use super::geometry::{Geometry, Trace};
use super::lane::{Lane, Seen};
use crate::vm::qga::QgaError;
use crate::vm::VmError;

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
        let shot = |p: (u32, u32)| {
            let q = geometry.in_shot(p);
            format!("({}, {})", q.x, q.y)
        };
        // Hover and focus can change with any input; only looking and waiting cannot.
        // Set first: input that fails half-way may still have changed the screen.
        let moves_pointer = !matches!(
            plan,
            Plan::Screenshot { .. }
                | Plan::Zoom { .. }
                | Plan::CursorPosition
                | Plan::Wait { .. }
                | Plan::Type { .. }
                | Plan::Key { .. }
                | Plan::Exec { .. }
        );
        if !matches!(
            plan,
            Plan::Screenshot { .. } | Plan::Zoom { .. } | Plan::CursorPosition | Plan::Wait { .. }
        ) {
            self.changed_since_frame = true;
        }
        if moves_pointer {
            self.pointer = at;
        } else {
            trace.pointer = None;
        }
        let mut shown = None;
        let outcome = match plan {
            Plan::Screenshot { scale, max_width } => {
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
                shown = Some(seen);
                Outcome::Screenshot {
                    png: enc.png,
                    width: enc.width,
                    height: enc.height,
                    scale: s,
                }
            }
            Plan::Zoom { scale, .. } => {
                let region = trace.region.expect("zoom regions are traced");
                let seen = self.look().await?;
                let enc = seen
                    .frame
                    .region_png(region, scale)
                    .map_err(VmError::from)?;
                shown = Some(seen);
                Outcome::Zoom {
                    png: enc.png,
                    width: enc.width,
                    height: enc.height,
                    region,
                }
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
                self.last_pointer = Some(Instant::now());
                // A click releases the button, also one mouse_down held.
                self.held.retain(|b| *b != button);
                Outcome::Done {
                    message: format!("clicked {button:?} x{count} at {}", shot(at)).to_lowercase(),
                }
            }
            Plan::MouseMove { .. } => {
                self.vm.move_to(at.0, at.1).await?;
                Outcome::Done {
                    message: format!("pointer at {}", shot(at)),
                }
            }
            Plan::MouseButton { button, down, .. } => {
                self.vm.button(at.0, at.1, button, down).await?;
                self.last_pointer = Some(Instant::now());
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
                let held = if self.held.is_empty() {
                    String::new()
                } else {
                    let names: Vec<String> = self
                        .held
                        .iter()
                        .map(|b| format!("{b:?}").to_lowercase())
                        .collect();
                    format!("; held: {}", names.join(", "))
                };
                Outcome::Done {
                    message: format!(
                        "{name} button {} at {}{note}{held}",
                        if down { "down" } else { "up" },
                        shot(at)
                    ),
                }
            }
            Plan::Drag {
                button, modifiers, ..
            } => {
                let path = trace.path.clone().unwrap_or_default();
                self.vm.drag(&path, button, &modifiers).await?;
                self.last_pointer = Some(Instant::now());
                self.held.retain(|b| *b != button);
                let first = path.first().copied().unwrap_or(at);
                Outcome::Done {
                    message: format!(
                        "dragged from {} to {} through {} points",
                        shot(first),
                        shot(at),
                        path.len()
                    ),
                }
            }
            Plan::Scroll {
                dx, dy, modifiers, ..
            } => {
                self.vm.scroll(at.0, at.1, dx, dy, &modifiers).await?;
                Outcome::Done {
                    message: format!("scrolled dx={dx} dy={dy} at {}", shot(at)),
                }
            }
            Plan::Type { pieces } => {
                self.vm.type_pieces(&pieces).await?;
                Outcome::Done {
                    message: format!("typed {} characters", pieces.len()),
                }
            }
            Plan::Key { combos, hold_ms } => {
                for c in &combos {
                    self.vm.combo(c, Duration::from_millis(hold_ms)).await?;
                }
                let held = if hold_ms > 0 {
                    format!(", each held {hold_ms} ms")
                } else {
                    String::new()
                };
                Outcome::Done {
                    message: format!("pressed {} key combination(s){held}", combos.len()),
                }
            }
            Plan::Wait {
                ms,
                stable_timeout_ms,
            } => self.wait(ms, stable_timeout_ms).await?,
            Plan::Exec {
                command,
                timeout_ms,
            } => {
                let cancel = super::Caller::current().cancel;
                let run = self
                    .vm
                    .exec_cancellable(&command, Duration::from_millis(timeout_ms), cancel.as_ref())
                    .await;
                match run {
                    Err(VmError::Qga(QgaError::Cancelled { ms })) => {
                        return Err(SessionError::Cancelled {
                            after_ms: ms,
                            note: " (the command may still run in the guest)",
                        })
                    }
                    other => Outcome::Exec(other?),
                }
            }
        };
        Ok((outcome, shown))
    }

    async fn wait(
        &mut self,
        ms: u64,
        stable_timeout_ms: Option<u64>,
    ) -> Result<Outcome, SessionError> {
        let started = Instant::now();
        let cancel = super::Caller::current().cancel;
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
