//! The VM as a session sees it: a display to look at, a pointer and keyboard to drive, and a
//! guest agent to run commands. Backend-neutral: it only needs the sockets in the runtime dir.

pub mod display;
pub mod input;
pub mod keymap;
pub mod keynames;
pub mod link;
pub mod qga;
pub mod qmp;
pub mod rings;
pub mod spec;
pub mod typing;
pub mod unicode;

use std::sync::Arc;
use std::time::{Duration, Instant};

use qapi::qmp::{
    InputAxis, InputBtnEvent, InputButton, InputEvent, InputKeyEvent, InputMoveEvent, KeyValue,
    QKeyCode,
};
use thiserror::Error;
use tokio::sync::OnceCell;

use display::{DisplayError, Frame};
use input::QCode;
use link::Link;
use qga::{ExecOutput, Qga, QgaError};
use qmp::{Qmp, QmpError};
use spec::RuntimeFiles;

#[derive(Debug, Error)]
pub enum VmError {
    #[error(transparent)]
    Qmp(#[from] QmpError),
    #[error(transparent)]
    Qga(#[from] QgaError),
    #[error(transparent)]
    Display(#[from] DisplayError),
    #[error("could not read the screendump")]
    ScreenFile(#[source] std::io::Error),
    #[error("could not map characters onto spare keys in the guest keymap: {0}")]
    Keymap(String),
    #[error("the guest took no key for {}s: {typed} of {total} keys were typed, the rest were not sent", .waited.as_secs())]
    KeyboardStalled {
        typed: usize,
        total: usize,
        waited: Duration,
    },
}

impl VmError {
    /// The QMP or guest-agent connection broke: QEMU is most likely gone.
    pub fn is_connection_lost(&self) -> bool {
        matches!(
            self,
            VmError::Qmp(QmpError::Lost { .. }) | VmError::Qga(QgaError::Lost { .. })
        )
    }
}

/// Pacing of key combinations and pointer input. QEMU's emulated input queues are short and
/// drop what does not fit, and a guest under TCG drains them slowly: each press and release is
/// followed by a pause; with these values bursts of 30 clicks arrived complete (tests). Typed
/// text is paced by the guest itself instead (`vm::typing`).
#[derive(Debug, Clone, Copy)]
pub struct Pacing {
    pub key_hold: Duration,
    pub key_gap: Duration,
    pub pointer_hold: Duration,
    pub pointer_gap: Duration,
}

impl Default for Pacing {
    fn default() -> Self {
        Pacing {
            key_hold: Duration::from_millis(8),
            key_gap: Duration::from_millis(8),
            pointer_hold: Duration::from_millis(20),
            pointer_gap: Duration::from_millis(20),
        }
    }
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Button {
    Left,
    Right,
    Middle,
}

impl Button {
    fn qemu(self) -> InputButton {
        match self {
            Button::Left => InputButton::left,
            Button::Right => InputButton::right,
            Button::Middle => InputButton::middle,
        }
    }
}

pub struct Vm {
    /// The runtime files as QEMU sees them.
    pub files: RuntimeFiles,
    link: Arc<dyn Link>,
    qmp: Qmp,
    /// Shared so the agent can be connected in the background while the session takes calls.
    qga: Arc<OnceCell<Qga>>,
    pub pacing: Pacing,
    /// Typing state kept across calls (`vm::typing`).
    keyboard: tokio::sync::Mutex<typing::Keyboard>,
    /// Guest screen size in pixels, refreshed by every screendump.
    pub width: u32,
    pub height: u32,
}

async fn connect_agent(
    cell: &OnceCell<Qga>,
    link: Arc<dyn Link>,
    timeout: Duration,
) -> Result<&Qga, VmError> {
    Ok(cell
        .get_or_try_init(|| async move { Qga::connect(link.as_ref(), timeout).await })
        .await?)
}

fn qcode(name: QCode) -> QKeyCode {
    name.parse()
        .unwrap_or_else(|_| panic!("input tables name an unknown qcode {name}"))
}

pub(crate) fn key_event(name: QCode, down: bool) -> InputEvent {
    InputEvent::key(
        InputKeyEvent {
            down,
            key: KeyValue::qcode(qcode(name).into()),
        }
        .into(),
    )
}

fn btn_event(button: InputButton, down: bool) -> InputEvent {
    InputEvent::btn(InputBtnEvent { button, down }.into())
}

impl Vm {
    /// How this VM is reached (the live view opens its own connections through it).
    pub fn link(&self) -> Arc<dyn Link> {
        self.link.clone()
    }

    pub async fn attach(
        link: Arc<dyn Link>,
        width: u32,
        height: u32,
        timeout: Duration,
    ) -> Result<Self, VmError> {
        let qmp = Qmp::connect(link.as_ref(), timeout).await?;
        Ok(Vm {
            files: link.files().clone(),
            link,
            qmp,
            qga: Arc::new(OnceCell::new()),
            pacing: Pacing::default(),
            keyboard: Default::default(),
            width,
            height,
        })
    }

    pub fn qmp(&self) -> &Qmp {
        &self.qmp
    }

    /// A file QEMU wrote (the serial log while booting), wherever QEMU runs.
    pub async fn read_file(&self, path: &std::path::Path) -> std::io::Result<Vec<u8>> {
        self.link.read(path).await
    }

    /// The guest agent, connected on first use (it starts a few seconds into a cold boot).
    pub async fn agent(&self, timeout: Duration) -> Result<&Qga, VmError> {
        connect_agent(&self.qga, self.link.clone(), timeout).await
    }

    /// Connects the guest agent and sets the guest clock from the host's, without holding the
    /// session: a resumed ready state wakes up with the clock of the day it was saved, and its
    /// agent takes a second or two to answer after resume. Calls that need the agent meanwhile
    /// wait for this same connection (the agent's socket serves one client at a time).
    pub fn sync_clock_in_background(&self) {
        let (cell, link) = (self.qga.clone(), self.link.clone());
        tokio::spawn(async move {
            match connect_agent(&cell, link, Duration::from_secs(30)).await {
                Ok(agent) => {
                    if let Err(e) = agent.sync_clock().await {
                        tracing::debug!(error = %e, "could not set the guest clock");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "guest agent not reachable after resume"),
            }
        });
    }

    pub async fn exec(&self, script: &str, timeout: Duration) -> Result<ExecOutput, VmError> {
        self.exec_cancellable(script, timeout, None).await
    }

    pub async fn exec_cancellable(
        &self,
        script: &str,
        timeout: Duration,
        cancel: Option<&tokio_util::sync::CancellationToken>,
    ) -> Result<ExecOutput, VmError> {
        Ok(self
            .agent(Duration::from_secs(30))
            .await?
            .sh(script, timeout, cancel)
            .await?)
    }

    pub async fn frame(&mut self) -> Result<Frame, VmError> {
        let path = self.link.screen();
        self.qmp.screendump(&path).await?;
        let bytes = self.link.read(&path).await.map_err(VmError::ScreenFile)?;
        let frame = Frame::from_ppm(&bytes)?;
        self.width = frame.width();
        self.height = frame.height();
        Ok(frame)
    }

    fn abs(&self, x: u32, y: u32) -> [InputEvent; 2] {
        [
            InputEvent::abs(
                InputMoveEvent {
                    axis: InputAxis::x,
                    value: input::to_abs(x, self.width),
                }
                .into(),
            ),
            InputEvent::abs(
                InputMoveEvent {
                    axis: InputAxis::y,
                    value: input::to_abs(y, self.height),
                }
                .into(),
            ),
        ]
    }

    pub async fn move_to(&self, x: u32, y: u32) -> Result<(), VmError> {
        self.qmp.send_events(self.abs(x, y).to_vec()).await?;
        tokio::time::sleep(self.pacing.pointer_gap).await;
        Ok(())
    }

    /// One press and release. The press travels with the position (one tablet report), so a
    /// click costs two queue entries.
    async fn press_release(&self, x: u32, y: u32, button: InputButton) -> Result<(), VmError> {
        let mut down = self.abs(x, y).to_vec();
        down.push(btn_event(button, true));
        self.qmp.send_events(down).await?;
        tokio::time::sleep(self.pacing.pointer_hold).await;
        self.qmp.send_events(vec![btn_event(button, false)]).await?;
        tokio::time::sleep(self.pacing.pointer_gap).await;
        Ok(())
    }

    async fn hold(&self, keys: &[QCode], down: bool) -> Result<(), VmError> {
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

    pub async fn click(
        &self,
        x: u32,
        y: u32,
        button: Button,
        count: u32,
        modifiers: &[QCode],
    ) -> Result<(), VmError> {
        self.hold(modifiers, true).await?;
        let result = async {
            // Repeats stay well inside the usual 250-400 ms double-click time.
            for _ in 0..count {
                self.press_release(x, y, button.qemu()).await?;
            }
            Ok::<_, VmError>(())
        }
        .await;
        // Modifiers are released even when the click failed, so no key stays stuck down.
        let released = self.hold(modifiers, false).await;
        result.and(released)
    }

    /// A button pressed or released at (x, y): the position travels in the same report.
    pub async fn button(&self, x: u32, y: u32, button: Button, down: bool) -> Result<(), VmError> {
        let mut events = self.abs(x, y).to_vec();
        events.push(btn_event(button.qemu(), down));
        self.qmp.send_events(events).await?;
        tokio::time::sleep(self.pacing.pointer_gap).await;
        Ok(())
    }

    /// Presses at the path's first point, moves through every point (segments in steps of ~40
    /// pixels, at most 12 a segment, so programs that track motion see a drag, not a jump),
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
        self.hold(modifiers, true).await?;
        let result = async {
            let mut down = self.abs(from.0, from.1).to_vec();
            down.push(btn_event(button.qemu(), true));
            self.qmp.send_events(down).await?;
            tokio::time::sleep(self.pacing.pointer_hold).await;
            for pair in path.windows(2) {
                let (a, b) = (pair[0], pair[1]);
                let len = (a.0 as f64 - b.0 as f64).hypot(a.1 as f64 - b.1 as f64);
                let steps = ((len / 40.0).ceil() as i64).clamp(1, 12);
                for i in 1..=steps {
                    let x = a.0 as i64 + (b.0 as i64 - a.0 as i64) * i / steps;
                    let y = a.1 as i64 + (b.1 as i64 - a.1 as i64) * i / steps;
                    self.move_to(x as u32, y as u32).await?;
                }
            }
            Ok::<_, VmError>(())
        }
        .await;
        let up = self
            .qmp
            .send_events(vec![btn_event(button.qemu(), false)])
            .await
            .map_err(VmError::from);
        tokio::time::sleep(self.pacing.pointer_gap).await;
        let released = self.hold(modifiers, false).await;
        result.and(up).and(released)
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
        self.hold(modifiers, true).await?;
        let result = self.wheel(dx, dy).await;
        let released = self.hold(modifiers, false).await;
        result.and(released)
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
                self.qmp.send_events(vec![btn_event(button, true)]).await?;
                self.qmp.send_events(vec![btn_event(button, false)]).await?;
                tokio::time::sleep(self.pacing.pointer_gap).await;
            }
        }
        Ok(())
    }

    /// Presses the keys together (in order), holds them `hold` (at least the usual key hold)
    /// and releases them in reverse.
    pub async fn combo(&self, keys: &[QCode], hold: Duration) -> Result<(), VmError> {
        self.hold(keys, true).await?;
        tokio::time::sleep(hold.max(self.pacing.key_hold)).await;
        self.hold(keys, false).await
    }

    /// Waits until `needed` consecutive frames, `interval` apart, differ by fewer than the settle
    /// threshold; returns the last frame and whether it settled before `timeout`.
    pub async fn settle(
        &mut self,
        timeout: Duration,
        interval: Duration,
        needed: u32,
    ) -> Result<(Frame, bool), VmError> {
        let deadline = Instant::now() + timeout;
        let mut last = self.frame().await?;
        let mut quiet = 0;
        while Instant::now() < deadline {
            tokio::time::sleep(interval).await;
            let next = self.frame().await?;
            if next.changed_pixels(&last) < display::SETTLE_THRESHOLD_PX {
                quiet += 1;
                if quiet >= needed {
                    return Ok((next, true));
                }
            } else {
                quiet = 0;
            }
            last = next;
        }
        Ok((last, false))
    }
}
