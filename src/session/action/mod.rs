//! What a tool call asks of a session ([`Action`]), checked into what the lane runs ([`Plan`])
//! by a pure step before any lock or side effect (`validate.rs`), and what comes back
//! ([`Outcome`]). Firecracker's `VmConfig::update() -> Result<_, VmConfigError>` is the shape: a
//! request that cannot run is refused before it queues behind anything.

use serde_json::{json, Value};

use crate::vm::input::QCode;
use crate::vm::qga::ExecOutput;
use crate::vm::unicode::Piece;
use crate::vm::Button;

mod ledger;
mod validate;

pub const MAX_WAIT_MS: u64 = 60_000;
pub const MAX_EXEC_TIMEOUT_MS: u64 = 300_000;
pub const DEFAULT_EXEC_TIMEOUT_MS: u64 = 30_000;
/// Combinations one `key` call may press: enough for "ctrl+a BackSpace"-style sequences, few
/// enough that one call holds the lane for about a second at most (plus any `hold_ms`).
pub const MAX_KEY_COMBOS: usize = 32;
/// Longest `exec` command: a script, not a payload (files go in through the guest agent).
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;
pub const MAX_SCROLL_CLICKS: i32 = 50;
/// Points of one drag path: a gesture, not a drawing.
pub const MAX_DRAG_POINTS: usize = 64;
/// Largest zoom factor: a 40-pixel line of text becomes 320 pixels tall.
pub const MAX_ZOOM_SCALE: f64 = 8.0;
/// Largest side of a zoomed picture, in pixels.
pub const MAX_ZOOM_SIDE: u32 = 4096;

/// A point in the pixel space of the session's latest screenshot.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Point {
    pub x: f64,
    pub y: f64,
}

/// A rectangle in the pixel space of the session's latest screenshot.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Region {
    pub x: f64,
    pub y: f64,
    pub width: f64,
    pub height: f64,
}

#[derive(Debug, Clone)]
pub enum Action {
    Screenshot {
        scale: Option<f64>,
        max_width: Option<u32>,
    },
    Zoom {
        region: Region,
        scale: Option<f64>,
    },
    CursorPosition,
    Click {
        /// None: where the pointer is.
        at: Option<Point>,
        button: Button,
        count: u32,
        modifiers: Vec<String>,
    },
    MouseMove {
        to: Point,
    },
    /// A button pressed (`down`) or released, where the pointer is or at a point.
    MouseButton {
        at: Option<Point>,
        button: Button,
        down: bool,
    },
    Drag {
        /// Where the button goes down, then every point it passes, the last where it comes up.
        path: Vec<Point>,
        button: Button,
        modifiers: Vec<String>,
    },
    Scroll {
        /// None: where the pointer is.
        at: Option<Point>,
        dx: i32,
        dy: i32,
        modifiers: Vec<String>,
    },
    Type {
        text: String,
        /// Keep the text out of the review ledger (its length only).
        secret: bool,
    },
    Key {
        keys: String,
        /// Hold each combination down this long before releasing it.
        hold_ms: Option<u64>,
    },
    Wait {
        ms: Option<u64>,
        until_stable: bool,
        timeout_ms: Option<u64>,
    },
    Exec {
        command: String,
        timeout_ms: Option<u64>,
        /// Run as root instead of the image's desktop user.
        root: bool,
    },
}

/// A checked action: every argument in range and parsed. Only coordinates are left to the lane,
/// since their valid range is the latest screenshot's size.
#[derive(Debug)]
pub enum Plan {
    Screenshot {
        scale: f64,
        max_width: Option<u32>,
    },
    Zoom {
        region: Region,
        scale: f64,
    },
    CursorPosition,
    Click {
        at: Option<Point>,
        button: Button,
        count: u32,
        modifiers: Vec<QCode>,
    },
    MouseMove {
        to: Point,
    },
    MouseButton {
        at: Option<Point>,
        button: Button,
        down: bool,
    },
    Drag {
        path: Vec<Point>,
        button: Button,
        modifiers: Vec<QCode>,
    },
    Scroll {
        at: Option<Point>,
        dx: i32,
        dy: i32,
        modifiers: Vec<QCode>,
    },
    Type {
        pieces: Vec<Piece>,
    },
    Key {
        combos: Vec<Vec<QCode>>,
        hold_ms: u64,
    },
    Wait {
        ms: u64,
        stable_timeout_ms: Option<u64>,
    },
    Exec {
        command: String,
        timeout_ms: u64,
        root: bool,
    },
}

pub enum Outcome {
    Screenshot {
        png: Vec<u8>,
        width: u32,
        height: u32,
        scale: f64,
    },
    /// A region of the screen; `region` in screen pixels (x, y, width, height).
    Zoom {
        png: Vec<u8>,
        width: u32,
        height: u32,
        region: (u32, u32, u32, u32),
    },
    /// The pointer, in the latest screenshot's pixels and in screen pixels.
    Cursor {
        at: Point,
        screen: (u32, u32),
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

impl Outcome {
    /// The outcome as structured content (without the picture).
    pub fn to_json(&self) -> Value {
        match self {
            Outcome::Screenshot {
                width,
                height,
                scale,
                ..
            } => json!({ "width": width, "height": height, "scale": scale }),
            Outcome::Zoom {
                width,
                height,
                region: (x, y, w, h),
                ..
            } => json!({
                "width": width, "height": height,
                "screen_region": { "x": x, "y": y, "width": w, "height": h },
            }),
            Outcome::Cursor { at, screen } => json!({
                "x": at.x, "y": at.y, "screen_x": screen.0, "screen_y": screen.1,
            }),
            Outcome::Done { message } => json!({ "ok": true, "message": message }),
            Outcome::Waited { waited_ms, stable } => {
                json!({ "waited_ms": waited_ms, "stable": stable })
            }
            Outcome::Exec(out) => serde_json::to_value(out).unwrap_or_default(),
        }
    }

    /// The picture this outcome carries, if any.
    pub fn png(&self) -> Option<&[u8]> {
        match self {
            Outcome::Screenshot { png, .. } | Outcome::Zoom { png, .. } => Some(png),
            _ => None,
        }
    }
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Screenshot { .. } => "screenshot",
            Action::Zoom { .. } => "zoom",
            Action::CursorPosition => "cursor_position",
            Action::Click { .. } => "click",
            Action::MouseMove { .. } => "mouse_move",
            Action::MouseButton { down: true, .. } => "mouse_down",
            Action::MouseButton { down: false, .. } => "mouse_up",
            Action::Drag { .. } => "drag",
            Action::Scroll { .. } => "scroll",
            Action::Type { .. } => "type",
            Action::Key { .. } => "key",
            Action::Wait { .. } => "wait",
            Action::Exec { .. } => "exec",
        }
    }

    /// Whether the call carries text the ledger must not keep.
    pub fn is_secret(&self) -> bool {
        matches!(self, Action::Type { secret: true, .. })
    }

    /// Whether the action can change what the screen shows (a pointer that only moves can
    /// still light up what it hovers): the ledger then keeps the frames before and after it.
    pub fn changes_screen(&self) -> bool {
        !matches!(
            self,
            Action::Screenshot { .. }
                | Action::Zoom { .. }
                | Action::CursorPosition
                | Action::Wait { .. }
        )
    }
}
