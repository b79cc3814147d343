//! The input tools: pointer, wheel and keyboard, each a thin handler that builds a session
//! [`Action`]; a router of its own beside the session tools, merged into one.

use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::CallToolResult;
use rmcp::{tool, tool_router, ErrorData as McpError};
use serde_json::Value;

use super::params::{
    ButtonArgs, ClickArgs, DragArgs, KeyArgs, MoveArgs, ScrollArgs, SessionArgs, TypeArgs,
    ZoomArgs, XY,
};
use super::tools::{tool_error, DeskvmServer};
use crate::session::action::Region;
use crate::session::{Action, Point, SessionError};
use crate::vm::Button;

fn pt(p: &XY) -> Point {
    Point { x: p.x, y: p.y }
}

/// A point given as two optional coordinates: both or neither.
pub(super) fn optional_point(x: Option<f64>, y: Option<f64>) -> Result<Option<Point>, String> {
    match (x, y) {
        (Some(x), Some(y)) => Ok(Some(Point { x, y })),
        (None, None) => Ok(None),
        _ => Err("give both x and y, or neither to act where the pointer is".into()),
    }
}

/// The drag's path from `from`/`to` or `path`: exactly one of the two ways.
fn drag_path(a: &DragArgs) -> Result<Vec<Point>, String> {
    match (&a.from, &a.to, &a.path) {
        (Some(f), Some(t), None) => Ok(vec![pt(f), pt(t)]),
        (None, None, Some(p)) => Ok(p.iter().map(pt).collect()),
        _ => Err("give either from and to, or path (2..=64 points), not both".into()),
    }
}

impl DeskvmServer {
    /// Arguments that parse but do not fit together: refused before any action, and recorded.
    pub(super) async fn refuse(&self, tool: &str, args: Value, message: String) -> CallToolResult {
        self.manager
            .record_refused_call(tool, &args, &message)
            .await;
        tool_error(SessionError::InvalidParams(message))
    }
}

#[tool_router(router = input_router, vis = "pub(crate)")]
impl DeskvmServer {
    #[tool(
        description = "Click at (x, y) in the latest screenshot's pixels. button: left|right|middle; count 1..3 (double/triple click); modifiers held during the click.",
        annotations(title = "Click", destructive_hint = false)
    )]
    async fn click(
        &self,
        Parameters(a): Parameters<ClickArgs>,
    ) -> Result<CallToolResult, McpError> {
        let action = Action::Click {
            at: Some(Point { x: a.x, y: a.y }),
            button: a.button.unwrap_or(Button::Left),
            count: a.count.unwrap_or(1),
            modifiers: a.modifiers,
        };
        Ok(self.act(&a.session_id, action).await)
    }

    #[tool(
        description = "Move the pointer to (x, y) without clicking (with a button held by mouse_down, this drags).",
        annotations(title = "Move pointer", destructive_hint = false)
    )]
    async fn mouse_move(
        &self,
        Parameters(a): Parameters<MoveArgs>,
    ) -> Result<CallToolResult, McpError> {
        let to = Point { x: a.x, y: a.y };
        Ok(self.act(&a.session_id, Action::MouseMove { to }).await)
    }

    #[tool(
        description = "Press a mouse button and keep it down (at x, y, or where the pointer is) until mouse_up: for drags made of several moves.",
        annotations(title = "Mouse button down", destructive_hint = false)
    )]
    async fn mouse_down(
        &self,
        Parameters(a): Parameters<ButtonArgs>,
    ) -> Result<CallToolResult, McpError> {
        Ok(self.mouse_button(a, true).await)
    }

    #[tool(
        description = "Release a mouse button (at x, y, or where the pointer is).",
        annotations(title = "Mouse button up", destructive_hint = false)
    )]
    async fn mouse_up(
        &self,
        Parameters(a): Parameters<ButtonArgs>,
    ) -> Result<CallToolResult, McpError> {
        Ok(self.mouse_button(a, false).await)
    }

    #[tool(
        description = "Where the pointer is, in the latest screenshot's pixels (x, y) and in screen pixels.",
        annotations(title = "Cursor position", read_only_hint = true)
    )]
    async fn cursor_position(
        &self,
        Parameters(a): Parameters<SessionArgs>,
    ) -> Result<CallToolResult, McpError> {
        Ok(self.act(&a.session_id, Action::CursorPosition).await)
    }

    #[tool(
        description = "A region of the screen as a PNG at full resolution (scale 1), or enlarged (scale up to 8): read small text without a full-size screenshot. x, y, width, height are in the latest screenshot's pixels; later coordinates stay in that screenshot's space.",
        annotations(title = "Zoom into a region", read_only_hint = true)
    )]
    async fn zoom(&self, Parameters(a): Parameters<ZoomArgs>) -> Result<CallToolResult, McpError> {
        let region = Region {
            x: a.x,
            y: a.y,
            width: a.width,
            height: a.height,
        };
        let action = Action::Zoom {
            region,
            scale: a.scale,
        };
        Ok(self.act(&a.session_id, action).await)
    }

    #[tool(
        description = "Press a button at `from`, move to `to`, release; or along `path`, a list of points (the button goes down at the first and comes up at the last). modifiers are held throughout.",
        annotations(title = "Drag", destructive_hint = false)
    )]
    async fn drag(&self, Parameters(a): Parameters<DragArgs>) -> Result<CallToolResult, McpError> {
        let path = match drag_path(&a) {
            Ok(p) => p,
            Err(m) => {
                let args = serde_json::json!({
                    "session_id": a.session_id, "from": a.from, "to": a.to, "path": a.path,
                });
                return Ok(self.refuse("drag", args, m).await);
            }
        };
        let action = Action::Drag {
            path,
            button: a.button.unwrap_or(Button::Left),
            modifiers: a.modifiers,
        };
        Ok(self.act(&a.session_id, action).await)
    }

    #[tool(
        description = "Scroll the wheel at (x, y): dy > 0 scrolls down, dx > 0 right (wheel clicks); modifiers held while it turns (ctrl+wheel zooms in many programs).",
        annotations(title = "Scroll", destructive_hint = false)
    )]
    async fn scroll(
        &self,
        Parameters(a): Parameters<ScrollArgs>,
    ) -> Result<CallToolResult, McpError> {
        let action = Action::Scroll {
            at: Some(Point { x: a.x, y: a.y }),
            dx: a.dx,
            dy: a.dy,
            modifiers: a.modifiers,
        };
        Ok(self.act(&a.session_id, action).await)
    }

    #[tool(
        name = "type",
        description = "Type text exactly into the focused window: any Unicode (accents, Greek, CJK, emoji, combining marks), newline and tab; up to 4096 characters. Click the target window first. Set secret=true for passwords: the review keeps only the length.",
        annotations(title = "Type text", destructive_hint = false)
    )]
    async fn type_text(
        &self,
        Parameters(a): Parameters<TypeArgs>,
    ) -> Result<CallToolResult, McpError> {
        let action = Action::Type {
            text: a.text,
            secret: a.secret,
        };
        Ok(self.act(&a.session_id, action).await)
    }

    #[tool(
        description = "Press key combinations, xdotool style: \"ctrl+s\", \"alt+Tab\", \"Return\", \"Escape\", \"F5\", \"super\", \"ctrl+shift+t\". Space-separated combos are pressed in sequence. hold_ms holds each combination down that long.",
        annotations(title = "Press keys", destructive_hint = false)
    )]
    async fn key(&self, Parameters(a): Parameters<KeyArgs>) -> Result<CallToolResult, McpError> {
        let action = Action::Key {
            keys: a.keys,
            hold_ms: a.hold_ms,
        };
        Ok(self.act(&a.session_id, action).await)
    }
}

impl DeskvmServer {
    async fn mouse_button(&self, a: ButtonArgs, down: bool) -> CallToolResult {
        let at = match optional_point(a.x, a.y) {
            Ok(p) => p,
            Err(m) => {
                let tool = if down { "mouse_down" } else { "mouse_up" };
                let args = serde_json::json!({ "session_id": a.session_id, "x": a.x, "y": a.y });
                return self.refuse(tool, args, m).await;
            }
        };
        let action = Action::MouseButton {
            at,
            button: a.button.unwrap_or(Button::Left),
            down,
        };
        self.act(&a.session_id, action).await
    }
}
