//! One serialized lane per session: the VM handle and what the lane knows of the screen (the
//! latest frame, the scale agents' coordinates are in), and the input barrier.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::action::{Outcome, Plan, Point};
use super::error::SessionError;
use crate::backend::Instance;
use crate::ledger::shots::frame_hash;
use crate::vm::display::{scaled_size, Frame};
use crate::vm::qga::QgaError;
use crate::vm::{Vm, VmError};

/// A frame the lane has seen, and when.
#[derive(Clone)]
pub struct Seen {
    pub frame: Arc<Frame>,
    /// Its pixel hash, which names it in the review ledger.
    pub hash: String,
    pub at: Instant,
    /// Whether the screen had stopped changing when this frame was taken.
    pub settled: bool,
}

/// The space agents' coordinates are in: the screen size and the scale of the latest
/// screenshot the session answered. Read without the lane lock, so coordinates are checked
/// before a call queues.
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    pub width: u32,
    pub height: u32,
    pub scale: f64,
}

/// Where the pointer acted, in screen pixels of the full-resolution frame (for the ledger).
#[derive(Debug, Clone, Default)]
pub struct Trace {
    pub pointer: Option<(u32, u32)>,
    pub path: Option<Vec<(u32, u32)>>,
}

impl Geometry {
    /// Maps a point in screenshot space to screen pixels, or says which range is valid.
    fn screen_point(&self, p: Point, what: &'static str) -> Result<(u32, u32), SessionError> {
        let (w, h) = scaled_size(self.width, self.height, self.scale);
        let ok = |v: f64, max: u32| v.is_finite() && v >= 0.0 && v <= (max - 1) as f64;
        if !ok(p.x, w) || !ok(p.y, h) {
            let space = if self.scale < 1.0 {
                format!(
                    "pixels of the latest screenshot, {w}x{h} at scale {:.3}",
                    self.scale
                )
            } else {
                format!("screen pixels, {w}x{h}")
            };
            return Err(SessionError::OffScreen {
                what,
                x: p.x,
                y: p.y,
                max_x: w - 1,
                max_y: h - 1,
                space,
            });
        }
        let sx = ((p.x / self.scale).round() as u32).min(self.width - 1);
        let sy = ((p.y / self.scale).round() as u32).min(self.height - 1);
        Ok((sx, sy))
    }

    /// Where a pointer action lands, checked against the latest screenshot before anything runs.
    pub fn trace(&self, plan: &Plan) -> Result<Trace, SessionError> {
        let one = |p, what| -> Result<Trace, SessionError> {
            Ok(Trace {
                pointer: Some(self.screen_point(p, what)?),
                path: None,
            })
        };
        match plan {
            Plan::Click { at, .. } => one(*at, "click"),
            Plan::MouseMove { to } => one(*to, "mouse_move"),
            Plan::Scroll { at, .. } => one(*at, "scroll"),
            Plan::Drag { from, to, .. } => {
                let a = self.screen_point(*from, "drag start")?;
                let b = self.screen_point(*to, "drag end")?;
                Ok(Trace {
                    pointer: Some(b),
                    path: Some(vec![a, b]),
                })
            }
            _ => Ok(Trace::default()),
        }
    }
}

pub struct Lane {
    pub vm: Vm,
    pub instance: Box<dyn Instance>,
    /// Shared with the session, which checks coordinates against it before taking the lane.
    pub geometry: Arc<std::sync::Mutex<Geometry>>,
    /// When the latest click or drag was sent (see [`Lane::input_barrier`]).
    pub last_pointer: Option<Instant>,
    /// The latest frame any screendump of this lane produced.
    pub latest: Option<Seen>,
    /// Whether an action that can change the screen ran after `latest` was taken.
    pub changed_since_frame: bool,
    /// The action (seq, when it ended) whose "after" frame is still to be recorded: by its
    /// capture task, or else by the next call that looks at the screen.
    pub awaiting_after: Option<(u64, Instant)>,
}

/// A frame younger than this counts as the current screen even if it was still changing.
const FRESH: Duration = Duration::from_millis(500);
/// A settled frame counts as the current screen this long after it was taken (an agent that
/// looked, thought and acts within it costs no screendump). Past it the screen is looked at
/// again, since a program may have changed it meanwhile.
const SETTLED_FOR: Duration = Duration::from_secs(10);

impl Lane {
    pub fn new(
        vm: Vm,
        instance: Box<dyn Instance>,
        geometry: Arc<std::sync::Mutex<Geometry>>,
    ) -> Self {
        Lane {
            vm,
            instance,
            geometry,
            last_pointer: None,
            latest: None,
            changed_since_frame: true,
            awaiting_after: None,
        }
    }

    /// A screendump, remembered as the latest frame.
    pub async fn look(&mut self) -> Result<Seen, VmError> {
        let frame = Arc::new(self.vm.frame().await?);
        Ok(self.saw(frame, false))
    }

    fn saw(&mut self, frame: Arc<Frame>, settled: bool) -> Seen {
        let hash = frame_hash(&frame);
        // The same pixels as a settled frame with no action in between: still settled.
        let still = !self.changed_since_frame
            && self
                .latest
                .as_ref()
                .is_some_and(|l| l.settled && l.hash == hash);
        let seen = Seen {
            frame,
            hash,
            at: Instant::now(),
            settled: settled || still,
        };
        self.latest = Some(seen.clone());
        self.changed_since_frame = false;
        seen
    }

    /// The screen as it is now: the latest frame when nothing can have changed it since (no
    /// action ran, and it was settled or is fresh), else a new screendump. Reusing is what
    /// keeps the ledger's cost off most replies.
    pub async fn current(&mut self) -> Result<Seen, VmError> {
        match &self.latest {
            Some(s)
                if !self.changed_since_frame
                    && s.at.elapsed() < if s.settled { SETTLED_FOR } else { FRESH } =>
            {
                Ok(s.clone())
            }
            _ => self.look().await,
        }
    }

    async fn settle(
        &mut self,
        timeout: Duration,
        interval: Duration,
        needed: u32,
    ) -> Result<bool, VmError> {
        let (frame, stable) = self.vm.settle(timeout, interval, needed).await?;
        self.saw(Arc::new(frame), stable);
        Ok(stable)
    }

    /// Input right after a click can overtake it: the window manager moves the focus only once
    /// it has handled the click. Under TCG the first three characters typed after a click reached
    /// the previously focused window, and a click on a window right after a click on the
    /// desktop background left no window focused (2 of 3 tries). So input that follows a click
    /// waits (at most 1.5 s) until the screen stops changing, which a focus change always does.
    async fn input_barrier(&mut self) -> Result<(), VmError> {
        if self
            .last_pointer
            .take()
            .is_some_and(|t| t.elapsed() < Duration::from_secs(2))
        {
            self.settle(Duration::from_millis(1500), Duration::from_millis(50), 2)
                .await?;
        }
        Ok(())
    }

    /// Waits at the input barrier when the plan is input that could overtake a click.
    pub async fn before(&mut self, plan: &Plan) -> Result<(), VmError> {
        if matches!(
            plan,
            Plan::Click { .. }
                | Plan::Drag { .. }
                | Plan::Scroll { .. }
                | Plan::Type { .. }
                | Plan::Key { .. }
        ) {
            self.input_barrier().await?;
        }
        Ok(())
    }

    /// Runs a checked plan whose points [`Geometry::trace`] resolved.
    pub async fn run(
        &mut self,
        plan: Plan,
        trace: &Trace,
    ) -> Result<(Outcome, Option<Seen>), SessionError> {
        let at = trace.pointer.unwrap_or_default();
        // Hover and focus can change with any input; only looking and waiting cannot.
        // Set first: input that fails half-way may still have changed the screen.
        if !matches!(plan, Plan::Screenshot { .. } | Plan::Wait { .. }) {
            self.changed_since_frame = true;
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
            Plan::Click {
                at: p,
                button,
                count,
                modifiers,
            } => {
                self.vm.click(at.0, at.1, button, count, &modifiers).await?;
                self.last_pointer = Some(Instant::now());
                Outcome::Done {
                    message: format!("clicked {button:?} x{count} at ({}, {})", p.x, p.y)
                        .to_lowercase(),
                }
            }
            Plan::MouseMove { to } => {
                self.vm.move_to(at.0, at.1).await?;
                Outcome::Done {
                    message: format!("pointer at ({}, {})", to.x, to.y),
                }
            }
            Plan::Drag { from, to, button } => {
                let path = trace.path.as_deref().unwrap_or_default();
                let (a, b) = (path.first().copied().unwrap_or(at), at);
                self.vm.drag(a, b, button).await?;
                self.last_pointer = Some(Instant::now());
                Outcome::Done {
                    message: format!(
                        "dragged from ({}, {}) to ({}, {})",
                        from.x, from.y, to.x, to.y
                    ),
                }
            }
            Plan::Scroll { at: p, dx, dy } => {
                self.vm.scroll(at.0, at.1, dx, dy).await?;
                Outcome::Done {
                    message: format!("scrolled dx={dx} dy={dy} at ({}, {})", p.x, p.y),
                }
            }
            Plan::Type { pieces } => {
                self.vm.type_pieces(&pieces).await?;
                Outcome::Done {
                    message: format!("typed {} characters", pieces.len()),
                }
            }
            Plan::Key { combos } => {
                for c in &combos {
                    self.vm.combo(c).await?;
                }
                Outcome::Done {
                    message: format!("pressed {} key combination(s)", combos.len()),
                }
            }
            Plan::Wait {
                ms,
                stable_timeout_ms,
            } => {
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
                Outcome::Waited {
                    waited_ms: started.elapsed().as_millis() as u64,
                    stable,
                }
            }
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::Button;

    #[test]
    fn points_map_through_the_latest_screenshot_scale() {
        let g = Geometry {
            width: 1280,
            height: 800,
            scale: 0.5,
        };
        let click = |x, y| Plan::Click {
            at: Point { x, y },
            button: Button::Left,
            count: 1,
            modifiers: vec![],
        };
        assert_eq!(
            g.trace(&click(639.0, 399.0)).unwrap().pointer,
            Some((1278, 798))
        );
        let e = g.trace(&click(640.0, 10.0)).unwrap_err().to_json();
        assert_eq!(
            (e["field"].as_str(), e["valid"].as_str()),
            (Some("x"), Some("0..=639"))
        );
        let e = g.trace(&click(10.0, f64::NAN)).unwrap_err().to_json();
        assert_eq!(e["field"], "y");
        let drag = Plan::Drag {
            from: Point { x: 0.0, y: 0.0 },
            to: Point { x: 100.0, y: 50.0 },
            button: Button::Left,
        };
        let t = g.trace(&drag).unwrap();
        assert_eq!(t.path, Some(vec![(0, 0), (200, 100)]));
        assert_eq!(
            g.trace(&Plan::Key { combos: vec![] }).unwrap().pointer,
            None
        );
    }
}
