//! Sessions: one VM each, one serialized command lane each. Every tool call becomes an
//! [`Action`] on a session and comes back as an [`Outcome`] or a [`SessionError`].

pub mod boot;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::sync::{watch, Mutex, RwLock};

use crate::backend::{Backend, BackendError, Instance};
use crate::image::ready::ReadyState;
use crate::image::{GuestImage, ImageError, DEFAULT_IMAGE};
use crate::storage::{self, Layout};
use crate::vm::input::{self, InputError};
use crate::vm::qga::ExecOutput;
use crate::vm::spec::{Accel, RuntimeFiles, VmSpec};
use crate::vm::{Button, Vm, VmError};
pub use boot::Startup;

/// The machine every ready state is saved with; a session's own size is set with xrandr after
/// resume, so one ready state serves every screen size.
pub const MACHINE_WIDTH: u32 = 1280;
pub const MACHINE_HEIGHT: u32 = 800;
pub const WIDTH_RANGE: (u32, u32) = (640, 1920);
pub const HEIGHT_RANGE: (u32, u32) = (480, 1200);
pub const MEMORY_RANGE: (u32, u32) = (512, 8192);
pub const DEFAULT_MEMORY_MB: u32 = 1024;
pub const MAX_WAIT_MS: u64 = 60_000;
pub const MAX_EXEC_TIMEOUT_MS: u64 = 300_000;

#[derive(Debug, Error)]
pub enum SessionError {
    #[error("unknown session {id:?}; {}", known_list(.known))]
    UnknownSession { id: String, known: Vec<String> },
    #[error("session {id} failed: {reason}. Its VM is gone; stop it with session_stop and start a new one")]
    Failed { id: String, reason: String },
    #[error("{0}")]
    OutOfRange(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("VM error: {0}")]
    Vm(#[from] VmError),
    #[error("session setup failed: {0}")]
    Setup(String),
    #[error("too many sessions: {max} are running; stop one first")]
    TooMany { max: usize },
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

fn known_list(known: &[String]) -> String {
    if known.is_empty() {
        "no sessions are running; start one with session_start".into()
    } else {
        format!("running sessions: {}", known.join(", "))
    }
}

impl SessionError {
    /// A short machine-readable kind for structured error results.
    pub fn kind(&self) -> &'static str {
        match self {
            SessionError::UnknownSession { .. } => "unknown_session",
            SessionError::Failed { .. } => "session_failed",
            SessionError::OutOfRange(_) => "out_of_range",
            SessionError::InvalidArgument(_) => "invalid_argument",
            SessionError::Input(InputError::UnknownKey { .. }) => "unknown_key",
            SessionError::Input(InputError::TextTooLong { .. }) => "text_too_long",
            SessionError::Input(_) => "invalid_input",
            SessionError::Image(_) => "image",
            SessionError::Backend(_) => "backend",
            SessionError::Vm(_) => "vm",
            SessionError::Setup(_) => "setup",
            SessionError::TooMany { .. } => "too_many_sessions",
            SessionError::Io(_) => "io",
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct StartRequest {
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub image: Option<String>,
    pub memory_mb: Option<u32>,
    pub network: bool,
}

#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct SessionInfo {
    pub session_id: String,
    pub width: u32,
    pub height: u32,
    pub image: String,
    pub memory_mb: u32,
    pub network: bool,
    pub accelerator: Accel,
    pub backend: String,
    pub startup: Startup,
    pub startup_ms: u64,
    pub state: String,
}

/// A point in the pixel space of the session's latest screenshot.
#[derive(Debug, Clone, Copy)]
pub struct Point {
    pub x: f64,
    pub y: f64,
}

#[derive(Debug, Clone)]
pub enum Action {
    Screenshot {
        scale: Option<f64>,
        max_width: Option<u32>,
    },
    Click {
        at: Point,
        button: Button,
        count: u32,
        modifiers: Vec<String>,
    },
    MouseMove {
        to: Point,
    },
    Drag {
        from: Point,
        to: Point,
        button: Button,
    },
    Scroll {
        at: Point,
        dx: i32,
        dy: i32,
    },
    Type {
        text: String,
    },
    Key {
        keys: String,
    },
    Wait {
        ms: Option<u64>,
        until_stable: bool,
        timeout_ms: Option<u64>,
    },
    Exec {
        command: String,
        timeout_ms: Option<u64>,
    },
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Screenshot { .. } => "screenshot",
            Action::Click { .. } => "click",
            Action::MouseMove { .. } => "mouse_move",
            Action::Drag { .. } => "drag",
            Action::Scroll { .. } => "scroll",
            Action::Type { .. } => "type",
            Action::Key { .. } => "key",
            Action::Wait { .. } => "wait",
            Action::Exec { .. } => "exec",
        }
    }
}

pub enum Outcome {
    Screenshot {
        png: Vec<u8>,
        width: u32,
        height: u32,
        scale: f64,
    },
    Done {
        message: String,
    },
    Waited {
        waited_ms: u64,
        stable: Option<bool>,
    },
    Exec(ExecOutput),
}

struct Lane {
    vm: Vm,
    instance: Box<dyn Instance>,
    /// Scale of the latest screenshot: coordinates are in its pixel space.
    scale: f64,
    /// When the latest click or drag was sent (see [`Lane::input_barrier`]).
    last_pointer: Option<Instant>,
}

pub struct Session {
    info: SessionInfo,
    lane: Mutex<Lane>,
    exited: watch::Receiver<Option<String>>,
    files: RuntimeFiles,
}

pub struct ManagerConfig {
    pub layout: Layout,
    pub backend: Arc<dyn Backend>,
    pub accel: Accel,
    pub max_sessions: usize,
}

pub struct SessionManager {
    cfg: ManagerConfig,
    sessions: RwLock<HashMap<String, Arc<Session>>>,
    counter: AtomicU64,
    starting: AtomicUsize,
}

/// Releases a start's place in [`SessionManager::starting`] however the start ends.
struct Reservation<'a>(&'a AtomicUsize);

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl SessionManager {
    pub fn new(cfg: ManagerConfig) -> Self {
        SessionManager {
            cfg,
            sessions: RwLock::new(HashMap::new()),
            counter: AtomicU64::new(0),
            starting: AtomicUsize::new(0),
        }
    }

    pub fn accel(&self) -> Accel {
        self.cfg.accel
    }

    pub fn backend(&self) -> &dyn Backend {
        self.cfg.backend.as_ref()
    }

    pub fn machine_spec(&self, image: &GuestImage, memory_mb: u32, network: bool) -> VmSpec {
        VmSpec {
            kernel: image.kernel(),
            initrd: image.initrd(),
            memory_mb,
            cpus: 2,
            width: MACHINE_WIDTH,
            height: MACHINE_HEIGHT,
            accel: self.cfg.accel,
            network,
            incoming: None,
        }
    }

    fn new_id(&self) -> String {
        // Short ids keep socket paths under the 108-byte limit.
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        format!(
            "{:04x}{:04x}",
            (std::process::id() ^ t) & 0xffff,
            n & 0xffff
        )
    }

    pub async fn start(&self, req: StartRequest) -> Result<SessionInfo, SessionError> {
        let started = Instant::now();
        let width = check_range("width", req.width.unwrap_or(MACHINE_WIDTH), WIDTH_RANGE)?;
        let height = check_range("height", req.height.unwrap_or(MACHINE_HEIGHT), HEIGHT_RANGE)?;
        let memory_mb = check_range(
            "memory_mb",
            req.memory_mb.unwrap_or(DEFAULT_MEMORY_MB),
            MEMORY_RANGE,
        )?;
        let image = GuestImage::locate(
            &self.cfg.layout,
            req.image.as_deref().unwrap_or(DEFAULT_IMAGE),
        )?;
        // Starts in flight count too, or concurrent starts could overshoot the limit.
        let in_flight = self.starting.fetch_add(1, Ordering::SeqCst);
        let _reservation = Reservation(&self.starting);
        if self.sessions.read().await.len() + in_flight >= self.cfg.max_sessions {
            return Err(SessionError::TooMany {
                max: self.cfg.max_sessions,
            });
        }
        let spec = self.machine_spec(&image, memory_mb, req.network);
        let ready = ReadyState::find(&image, self.cfg.backend.qemu_version(), &spec);
        if ready.is_none() {
            tracing::warn!("no ready state for this QEMU build and machine; cold-booting (run `deskvm image build` to save one)");
        }
        let id = self.new_id();
        let files = RuntimeFiles {
            dir: self.cfg.layout.sessions().join(&id),
        };
        storage::owned_dir(&files.dir)?;
        let booted = boot::start_vm(
            self.cfg.backend.as_ref(),
            &id,
            &image,
            spec,
            ready.as_ref(),
            &files,
        )
        .await;
        let mut booted = match booted {
            Ok(b) => b,
            Err(e) => {
                let _ = storage::remove_owned_dir(&files.dir);
                return Err(e);
            }
        };
        if (width, height) != (MACHINE_WIDTH, MACHINE_HEIGHT) {
            if let Err(e) = set_resolution(&mut booted.vm, width, height).await {
                booted.instance.stop().await;
                let _ = storage::remove_owned_dir(&files.dir);
                return Err(e);
            }
        }
        let info = SessionInfo {
            session_id: id.clone(),
            width,
            height,
            image: image.name.clone(),
            memory_mb,
            network: req.network,
            accelerator: self.cfg.accel,
            backend: self.cfg.backend.name().to_string(),
            startup: booted.startup,
            startup_ms: started.elapsed().as_millis() as u64,
            state: "running".into(),
        };
        if booted.startup == Startup::ReadyState {
            booted.vm.sync_clock_in_background();
        }
        let exited = booted.instance.exited();
        // Recorded when it happens, not only when the next call trips over it.
        let (watch_id, watched) = (id.clone(), exited.clone());
        tokio::spawn(async move {
            if let Some(reason) = boot::exit_reason(watched).await.filter(|r| r != "stopped") {
                tracing::warn!(session = %watch_id, %reason, "session failed: its VM exited");
            }
        });
        let session = Arc::new(Session {
            info: info.clone(),
            lane: Mutex::new(Lane {
                vm: booted.vm,
                instance: booted.instance,
                scale: 1.0,
                last_pointer: None,
            }),
            exited,
            files,
        });
        self.sessions.write().await.insert(id.clone(), session);
        tracing::info!(session = %id, startup_ms = info.startup_ms, startup = ?info.startup, "session started");
        Ok(info)
    }

    async fn get(&self, id: &str) -> Result<Arc<Session>, SessionError> {
        let sessions = self.sessions.read().await;
        sessions.get(id).cloned().ok_or_else(|| {
            let mut known: Vec<String> = sessions.keys().cloned().collect();
            known.sort();
            SessionError::UnknownSession {
                id: id.to_string(),
                known,
            }
        })
    }

    pub async fn list(&self) -> Vec<SessionInfo> {
        let sessions = self.sessions.read().await;
        let mut list: Vec<SessionInfo> = sessions
            .values()
            .map(|s| {
                let mut info = s.info.clone();
                if s.exited.borrow().is_some() {
                    info.state = "failed".into();
                }
                info
            })
            .collect();
        list.sort_by(|a, b| a.session_id.cmp(&b.session_id));
        list
    }

    pub async fn stop(&self, id: &str) -> Result<(), SessionError> {
        let session = self.get(id).await?;
        self.sessions.write().await.remove(id);
        let mut lane = session.lane.lock().await;
        lane.vm.qmp().quit().await;
        lane.instance.stop().await;
        storage::remove_owned_dir(&session.files.dir)?;
        tracing::info!(session = %id, "session stopped");
        Ok(())
    }

    pub async fn shutdown(&self) {
        let ids: Vec<String> = self.sessions.read().await.keys().cloned().collect();
        for id in ids {
            let _ = self.stop(&id).await;
        }
    }

    pub async fn act(&self, id: &str, action: Action) -> Result<Outcome, SessionError> {
        let session = self.get(id).await?;
        session.check_alive()?;
        let mut lane = session.lane.lock().await;
        let result = lane.run(action).await;
        // A VM error is most often the VM dying mid-call: say that rather than "broken pipe".
        match result {
            Err(SessionError::Vm(e)) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                session.check_alive()?;
                Err(SessionError::Vm(e))
            }
            other => other,
        }
    }
}

impl Session {
    fn check_alive(&self) -> Result<(), SessionError> {
        match self.exited.borrow().clone() {
            Some(reason) => Err(SessionError::Failed {
                id: self.info.session_id.clone(),
                reason,
            }),
            None => Ok(()),
        }
    }
}

fn check_range(name: &str, v: u32, (lo, hi): (u32, u32)) -> Result<u32, SessionError> {
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(SessionError::OutOfRange(format!(
            "{name}={v} is out of range; valid: {lo}..={hi}"
        )))
    }
}

/// Sets the guest screen size with xrandr through the guest agent (adding a GTF mode when the
/// size is not one the virtual monitor lists), then checks the framebuffer really has it.
async fn set_resolution(vm: &mut Vm, width: u32, height: u32) -> Result<(), SessionError> {
    let script = format!(
        "set -e; out=$(xrandr | awk '/ connected/ {{print $1; exit}}'); m={width}x{height}; \
         if ! xrandr | grep -q \"^ *$m \"; then \
           line=$(gtf {width} {height} 60 | awk '/Modeline/ {{for (i=3;i<=NF;i++) printf \"%s \", $i}}'); \
           xrandr --newmode $m $line; xrandr --addmode $out $m; fi; \
         xrandr --output $out --mode $m"
    );
    let out = vm.exec(&script, Duration::from_secs(20)).await?;
    if out.exit_code != 0 {
        return Err(SessionError::Setup(format!(
            "could not set the screen to {width}x{height}: {}",
            out.stderr.trim()
        )));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let f = vm.frame().await?;
        if (f.width(), f.height()) == (width, height) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(SessionError::Setup(format!(
                "asked for {width}x{height} but the guest screen is {}x{}",
                f.width(),
                f.height()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Lane {
    /// Input right after a click can overtake it: the window manager moves the focus only once
    /// it has handled the click. Under TCG the first three characters typed after a click reached
    /// the previously focused window, and a click on a window right after a click on the
    /// desktop background left no window focused (2 of 3 tries). So input that follows a click
    /// waits (at most 1.5 s) until the screen stops changing, which a focus change always does.
    async fn input_barrier(&mut self) -> Result<(), SessionError> {
        if self
            .last_pointer
            .take()
            .is_some_and(|t| t.elapsed() < Duration::from_secs(2))
        {
            self.vm
                .settle(Duration::from_millis(1500), Duration::from_millis(50), 2)
                .await?;
        }
        Ok(())
    }

    /// Maps a point in screenshot space to screen pixels, or says which range is valid.
    fn to_screen(&self, p: Point, what: &str) -> Result<(u32, u32), SessionError> {
        let (w, h) = crate::vm::display::scaled_size(self.vm.width, self.vm.height, self.scale);
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
            return Err(SessionError::OutOfRange(format!(
                "{what} ({}, {}) is outside the screen: x must be in 0..={} and y in 0..={} ({space})",
                p.x,
                p.y,
                w - 1,
                h - 1
            )));
        }
        let sx = ((p.x / self.scale).round() as u32).min(self.vm.width - 1);
        let sy = ((p.y / self.scale).round() as u32).min(self.vm.height - 1);
        Ok((sx, sy))
    }

    async fn run(&mut self, action: Action) -> Result<Outcome, SessionError> {
        if matches!(
            action,
            Action::Click { .. }
                | Action::Drag { .. }
                | Action::Scroll { .. }
                | Action::Type { .. }
                | Action::Key { .. }
        ) {
            self.input_barrier().await?;
        }
        match action {
            Action::Screenshot { scale, max_width } => {
                let frame = self.vm.frame().await?;
                let mut s = match scale {
                    None => 1.0,
                    Some(s) if s > 0.0 && s <= 1.0 => s,
                    Some(s) => {
                        return Err(SessionError::OutOfRange(format!(
                            "scale={s} is out of range; valid: greater than 0 up to 1"
                        )))
                    }
                };
                if let Some(mw) = max_width {
                    if mw < 64 {
                        return Err(SessionError::OutOfRange(format!(
                            "max_width={mw} is out of range; valid: 64 or more"
                        )));
                    }
                    s = s.min(mw as f64 / frame.width() as f64);
                }
                let enc = frame.png(s).map_err(VmError::from)?;
                self.scale = s;
                Ok(Outcome::Screenshot {
                    png: enc.png,
                    width: enc.width,
                    height: enc.height,
                    scale: s,
                })
            }
            Action::Click {
                at,
                button,
                count,
                modifiers,
            } => {
                if !(1..=3).contains(&count) {
                    return Err(SessionError::OutOfRange(format!(
                        "count={count} is out of range; valid: 1..=3"
                    )));
                }
                let mut mods = Vec::new();
                for m in &modifiers {
                    mods.extend(input::parse_combo(m)?);
                }
                let (x, y) = self.to_screen(at, "click")?;
                self.vm.click(x, y, button, count, &mods).await?;
                self.last_pointer = Some(Instant::now());
                Ok(Outcome::Done {
                    message: format!("clicked {button:?} x{count} at ({}, {})", at.x, at.y)
                        .to_lowercase(),
                })
            }
            Action::MouseMove { to } => {
                let (x, y) = self.to_screen(to, "mouse_move")?;
                self.vm.move_to(x, y).await?;
                Ok(Outcome::Done {
                    message: format!("pointer at ({}, {})", to.x, to.y),
                })
            }
            Action::Drag { from, to, button } => {
                let a = self.to_screen(from, "drag start")?;
                let b = self.to_screen(to, "drag end")?;
                self.vm.drag(a, b, button).await?;
                self.last_pointer = Some(Instant::now());
                Ok(Outcome::Done {
                    message: format!(
                        "dragged from ({}, {}) to ({}, {})",
                        from.x, from.y, to.x, to.y
                    ),
                })
            }
            Action::Scroll { at, dx, dy } => {
                for (name, v) in [("dx", dx), ("dy", dy)] {
                    if !(-50..=50).contains(&v) {
                        return Err(SessionError::OutOfRange(format!(
                            "{name}={v} is out of range; valid: -50..=50 wheel clicks"
                        )));
                    }
                }
                let (x, y) = self.to_screen(at, "scroll")?;
                self.vm.scroll(x, y, dx, dy).await?;
                Ok(Outcome::Done {
                    message: format!("scrolled dx={dx} dy={dy} at ({}, {})", at.x, at.y),
                })
            }
            Action::Type { text } => {
                let strokes = input::strokes_for_text(&text)?;
                self.vm.type_strokes(&strokes).await?;
                Ok(Outcome::Done {
                    message: format!("typed {} characters", strokes.len()),
                })
            }
            Action::Key { keys } => {
                // Several combos may be given separated by spaces: "ctrl+a Delete".
                let combos: Vec<Vec<input::QCode>> = keys
                    .split_whitespace()
                    .map(input::parse_combo)
                    .collect::<Result<_, _>>()?;
                if combos.is_empty() {
                    return Err(InputError::EmptyCombo(keys).into());
                }
                for c in &combos {
                    self.vm.combo(c).await?;
                }
                Ok(Outcome::Done {
                    message: format!("pressed {keys}"),
                })
            }
            Action::Wait {
                ms,
                until_stable,
                timeout_ms,
            } => {
                let started = Instant::now();
                let ms = ms.unwrap_or(if until_stable { 0 } else { 1000 });
                if ms > MAX_WAIT_MS {
                    return Err(SessionError::OutOfRange(format!(
                        "ms={ms} is out of range; valid: 0..={MAX_WAIT_MS}"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(ms)).await;
                let stable = if until_stable {
                    let t = timeout_ms.unwrap_or(10_000);
                    if t > MAX_WAIT_MS {
                        return Err(SessionError::OutOfRange(format!(
                            "timeout_ms={t} is out of range; valid: 0..={MAX_WAIT_MS}"
                        )));
                    }
                    let (_, stable) = self
                        .vm
                        .settle(Duration::from_millis(t), Duration::from_millis(150), 3)
                        .await?;
                    Some(stable)
                } else {
                    None
                };
                Ok(Outcome::Waited {
                    waited_ms: started.elapsed().as_millis() as u64,
                    stable,
                })
            }
            Action::Exec {
                command,
                timeout_ms,
            } => {
                let t = timeout_ms.unwrap_or(30_000);
                if t == 0 || t > MAX_EXEC_TIMEOUT_MS {
                    return Err(SessionError::OutOfRange(format!(
                        "timeout_ms={t} is out of range; valid: 1..={MAX_EXEC_TIMEOUT_MS}"
                    )));
                }
                Ok(Outcome::Exec(
                    self.vm.exec(&command, Duration::from_millis(t)).await?,
                ))
            }
        }
    }
}
