//! Clicks, drags and scrolls built from tablet reports (`vm::pointer`), with the modifiers
//! held around them. Every report waits for the guest to take it, so the pauses here (a
//! button's hold, the gap after a click) count in guest time.

use qapi::qmp::{InputAxis, InputButton, InputEvent, InputMoveEvent};

use super::input::{self, QCode};
use super::{btn_event, key_event, Button, Vm, VmError};

/// Steps of one drag segment: about one per 40 pixels, so programs that track motion see a
/// drag and not a jump; at least two in the first segment, since a window manager starts a
/// move on the first motion and moves the window only on later ones (openbox).
fn steps(len: f64, first: bool) -> i64 {
    let min = if first { 2 } else { 1 };
    ((len / 40.0).ceil() as i64).clamp(min, 12)
}

/// The points a drag passes through after its start, segment by segment.
fn drag_points(path: &[(u32, u32)]) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    for (k, pair) in path.windows(2).enumerate() {
        let (a, b) = (pair[0], pair[1]);
        let len = (a.0 as f64 - b.0 as f64).hypot(a.1 as f64 - b.1 as f64);
        let n = steps(len, k == 0);
        for i in 1..=n {
            let x = a.0 as i64 + (b.0 as i64 - a.0 as i64) * i / n;
            let y = a.1 as i64 + (b.1 as i64 - a.1 as i64) * i / n;
            out.push((x as u32, y as u32));
        }
    }
    out
}

impl Vm {
    fn abs(&self, x: u32, y: u32) -> [InputEvent; 2] {
        let axis = |axis, value| InputEvent::abs(InputMoveEvent { axis, value }.into());
        [
            axis(InputAxis::x, input::to_abs(x, self.width)),
            axis(InputAxis::y, input::to_abs(y, self.height)),
        ]
    }

    pub async fn move_to(&self, x: u32, y: u32) -> Result<(), VmError> {
        self.report(self.abs(x, y).to_vec()).await?;
        self.after_motion().await?;
        tokio::time::sleep(self.pacing.pointer_gap).await;
        Ok(())
    }

    /// A button pressed or released at (x, y): the position travels in the same report.
    async fn press_at(
        &self,
        x: u32,
        y: u32,
        button: InputButton,
        down: bool,
    ) -> Result<(), VmError> {
        let mut events = self.abs(x, y).to_vec();
        events.push(btn_event(button, down));
        self.report(events).await?;
        self.pressed(down).await;
        Ok(())
    }

    /// Keys pressed (in order) or released (in reverse).
    pub(super) async fn hold(&self, keys: &[QCode], down: bool) -> Result<(), VmError> {
        if keys.is_empty() {
            return Ok(());
        }
        let events = if down {
            keys.iter().map(|k| key_event(k, true)).collect()
        } else {
            keys.iter().rev().map(|k| key_event(k, false)).collect()
        };
        self.qmp.send_events(events).await?;
        tokio::time::sleep(self.pacing.key_gap).await;
        Ok(())
    }

    /// Runs `pointer` with `modifiers` held; X confirms the pointer input before they are
    /// released, and they are released even when `pointer` failed, so no key stays down.
    async fn with_modifiers(
        &self,
        modifiers: &[QCode],
        pointer: impl std::future::Future<Output = Result<(), VmError>>,
    ) -> Result<(), VmError> {
        if modifiers.is_empty() {
            return pointer.await;
        }
        // Keys and pointer are separate devices to the guest: X confirms the modifiers before
        // the pointer input they modify goes, and that input before they are released.
        self.hold(modifiers, true).await?;
        let mut result = self.confirm_keys().await;
        if result.is_ok() {
            result = pointer.await;
        }
        if result.is_ok() {
            result = self.confirm_keys().await;
        }
        let released = self.hold(modifiers, false).await;
        result.and(released)
    }

    pub async fn click(
        &self,
        x: u32,
        y: u32,
        button: Button,
        count: u32,
        modifiers: &[QCode],
    ) -> Result<(), VmError> {
        self.with_modifiers(modifiers, async {
            // Repeats stay well inside the usual 250-400 ms double-click time.
            for _ in 0..count {
                self.press_at(x, y, button.qemu(), true).await?;
                tokio::time::sleep(self.pacing.pointer_hold).await;
                self.press_at(x, y, button.qemu(), false).await?;
                tokio::time::sleep(self.pacing.pointer_gap).await;
            }
            Ok(())
        })
        .await
    }

    /// A button pressed or released at (x, y).
    pub async fn button(&self, x: u32, y: u32, button: Button, down: bool) -> Result<(), VmError> {
        self.press_at(x, y, button.qemu(), down).await?;
        tokio::time::sleep(self.pacing.pointer_gap).await;
        Ok(())
    }

    /// Presses at the path's first point, moves through every point ([`drag_points`]) and
    /// releases at the last; the button and the modifiers are released even when a step fails.
    pub async fn drag(
        &self,
        path: &[(u32, u32)],
        button: Button,
        modifiers: &[QCode],
    ) -> Result<(), VmError> {
        let Some(&from) = path.first() else {
            return Ok(());
        };
        self.with_modifiers(modifiers, async {
            let moved = async {
                self.press_at(from.0, from.1, button.qemu(), true).await?;
                tokio::time::sleep(self.pacing.pointer_hold).await;
                for (x, y) in drag_points(path) {
                    self.move_to(x, y).await?;
                }
                Ok::<_, VmError>(())
            }
            .await;
            // Released where the pointer is: a path cut short by an error ends there.
            let up = self.report(vec![btn_event(button.qemu(), false)]).await;
            self.pressed(false).await;
            tokio::time::sleep(self.pacing.pointer_gap).await;
            moved.and(up)
        })
        .await
    }

    pub async fn scroll(
        &self,
        x: u32,
        y: u32,
        dx: i32,
        dy: i32,
        modifiers: &[QCode],
    ) -> Result<(), VmError> {
        self.move_to(x, y).await?;
        self.with_modifiers(modifiers, self.wheel(dx, dy)).await
    }

    async fn wheel(&self, dx: i32, dy: i32) -> Result<(), VmError> {
        let vertical = if dy > 0 {
            InputButton::wheel_down
        } else {
            InputButton::wheel_up
        };
        let horizontal = if dx > 0 {
            InputButton::wheel_right
        } else {
            InputButton::wheel_left
        };
        for (button, n) in [
            (vertical, dy.unsigned_abs()),
            (horizontal, dx.unsigned_abs()),
        ] {
            for _ in 0..n {
                self.report(vec![btn_event(button, true)]).await?;
                self.report(vec![btn_event(button, false)]).await?;
                tokio::time::sleep(self.pacing.pointer_gap).await;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::drag_points;

    #[test]
    fn drags_move_at_least_twice_and_end_on_every_point() {
        // A short drag still has a motion after the one a window manager starts on.
        assert_eq!(drag_points(&[(0, 0), (10, 0)]), vec![(5, 0), (10, 0)]);
        let p = drag_points(&[(300, 57), (350, 100), (400, 157)]);
        assert_eq!(p.len(), 4);
        assert_eq!(p[1], (350, 100));
        assert_eq!(*p.last().unwrap(), (400, 157));
        assert_eq!(drag_points(&[(0, 0), (1000, 0)]).len(), 12);
    }
}
