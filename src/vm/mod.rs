//! The VM as a session sees it: a display to look at, a pointer and keyboard to drive, and a
//! guest agent to run commands. Backend-neutral: it only needs the sockets in the runtime dir.

pub mod display;
mod gestures;
pub mod input;
pub mod keymap;
pub mod keynames;
pub mod link;
mod pointer;
pub mod qga;
pub mod qmp;
pub mod rings;
pub mod spec;
pub mod typing;
pub mod unicode;

use std::sync::Arc;
use std::time::{Duration, Instant};

use qapi::qmp::{InputBtnEvent, InputButton, InputEvent, InputKeyEvent, KeyValue, QKeyCode};
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
    #[error("the guest took no pointer input for {}s", .waited.as_secs())]
    PointerStalled { waited: Duration },
    #[error("the guest's X did not confirm the input within {}s", .waited.as_secs())]
    InputUnconfirmed { waited: Duration },
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

/// Pauses of key combinations and pointer input: how long a key or button is held, and the
/// gap after it. Pointer pauses count from when the guest took the report (`vm::pointer`);
/// typed text is paced by X itself (`vm::typing`).
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
    /// Pointer state kept across calls (`vm::pointer`).
    tablet: tokio::sync::Mutex<pointer::Tablet>,
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
            tablet: Default::default(),
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
