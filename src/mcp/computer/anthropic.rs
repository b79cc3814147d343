//! Anthropic's computer-use actions (`computer_20251124`, and `computer_20250124` which lacks
//! `zoom`) onto session actions. Field names and units as Anthropic's computer-use docs and
//! the reference implementation (claude-quickstarts `computer.py`) define them.

use serde_json::{Map, Value};

use super::{Mapped, Reply};
use crate::session::action::{Region, MAX_SCROLL_CLICKS, MAX_WAIT_MS};
use crate::session::{check_range, Action, Point, SessionError};
use crate::vm::Button;

pub const ACTIONS: &[&str] = &[
    "screenshot",
    "zoom",
    "left_click",
    "right_click",
    "middle_click",
    "double_click",
    "triple_click",
    "left_mouse_down",
    "left_mouse_up",
    "left_click_drag",
    "mouse_move",
    "cursor_position",
    "scroll",
    "type",
    "key",
    "hold_key",
    "wait",
];

/// `duration` in seconds: the reference implementation allows 100, a deskvm call holds its
/// session for at most a minute.
const MAX_DURATION_S: f64 = (MAX_WAIT_MS / 1000) as f64;

fn bad(message: impl Into<String>) -> SessionError {
    SessionError::InvalidParams(message.into())
}

fn point(a: &Map<String, Value>, field: &str) -> Result<Option<Point>, SessionError> {
    let Some(v) = a.get(field).filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    match v.as_array().map(|xy| (xy.len(), xy)) {
        Some((2, xy)) => match (xy[0].as_f64(), xy[1].as_f64()) {
            (Some(x), Some(y)) => Ok(Some(Point { x, y })),
            _ => Err(bad(format!("{field} must be [x, y] in pixels, got {v}"))),
        },
        _ => Err(bad(format!("{field} must be [x, y] in pixels, got {v}"))),
    }
}

fn need_point(a: &Map<String, Value>, field: &str, action: &str) -> Result<Point, SessionError> {
    point(a, field)?.ok_or_else(|| bad(format!("{action} needs {field}: [x, y]")))
}

fn text<'a>(a: &'a Map<String, Value>, action: &str) -> Result<&'a str, SessionError> {
    a.get("text")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(format!("{action} needs text (a string)")))
}

/// Modifier keys held during a click or scroll: `text` as the docs say ("shift", "ctrl+shift"),
/// or `key` as the reference implementation reads them.
fn modifiers(a: &Map<String, Value>) -> Vec<String> {
    ["text", "key"]
        .iter()
        .filter_map(|f| a.get(*f).and_then(Value::as_str))
        .filter(|s| !s.trim().is_empty())
        .map(str::to_string)
        .collect()
}

fn seconds_ms(a: &Map<String, Value>, action: &str) -> Result<u64, SessionError> {
    let d = a
        .get("duration")
        .and_then(Value::as_f64)
        .ok_or_else(|| bad(format!("{action} needs duration (seconds)")))?;
    if !(0.0..=MAX_DURATION_S).contains(&d) {
        return Err(SessionError::OutOfRange {
            field: "duration",
            value: d.to_string(),
            valid: format!("0..={MAX_DURATION_S} seconds"),
        });
    }
    Ok((d * 1000.0).round() as u64)
}

/// One Anthropic action as session steps and the reply's shape: one arm per action, with the
/// actions that check more than a field or two (zoom, scroll) in their own functions.
pub fn map(a: &Map<String, Value>, secret: bool) -> Result<Mapped, SessionError> {
    let name = a
        .get("action")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("an Anthropic action needs \"action\" (a string)"))?;
    let click = |button, count| -> Result<Mapped, SessionError> {
        Ok(Mapped::then_look(Action::Click {
            at: point(a, "coordinate")?,
            button,
            count,
            modifiers: modifiers(a),
        }))
    };
    match name {
        "screenshot" => Ok(Mapped {
            steps: vec![Action::Screenshot {
                scale: None,
                max_width: None,
            }],
            reply: Reply::Outcome,
        }),
        "zoom" => zoom(a),
        "left_click" => click(Button::Left, 1),
        "right_click" => click(Button::Right, 1),
        "middle_click" => click(Button::Middle, 1),
        "double_click" => click(Button::Left, 2),
        "triple_click" => click(Button::Left, 3),
        "left_mouse_down" | "left_mouse_up" => Ok(Mapped::then_look(Action::MouseButton {
            at: point(a, "coordinate")?,
            button: Button::Left,
            down: name == "left_mouse_down",
        })),
        "left_click_drag" => Ok(Mapped::then_look(Action::Drag {
            path: vec![
                need_point(a, "start_coordinate", name)?,
                need_point(a, "coordinate", name)?,
            ],
            button: Button::Left,
            modifiers: modifiers(a),
        })),
        "mouse_move" => Ok(Mapped::then_look(Action::MouseMove {
            to: need_point(a, "coordinate", name)?,
        })),
        "cursor_position" => Ok(Mapped {
            steps: vec![Action::CursorPosition],
            reply: Reply::CursorText,
        }),
        "scroll" => scroll(a),
        "type" => Ok(Mapped::then_look(Action::Type {
            text: text(a, name)?.to_string(),
            secret,
        })),
        "key" => Ok(Mapped::then_look(Action::Key {
            keys: text(a, name)?.to_string(),
            hold_ms: None,
        })),
        "hold_key" => Ok(Mapped::then_look(Action::Key {
            keys: text(a, name)?.to_string(),
            hold_ms: Some(seconds_ms(a, name)?),
        })),
        "wait" => Ok(Mapped::then_look(Action::Wait {
            ms: Some(seconds_ms(a, name)?),
            until_stable: false,
            timeout_ms: None,
        })),
        other => Err(SessionError::UnknownAction {
            format: "Anthropic computer-use",
            action: other.to_string(),
            supported: ACTIONS.to_vec(),
        }),
    }
}

/// `zoom`: a region given by its corners, as deskvm's region (corner, width and height).
fn zoom(a: &Map<String, Value>) -> Result<Mapped, SessionError> {
    let r = a.get("region").and_then(Value::as_array);
    let corners: Option<Vec<f64>> = r
        .filter(|r| r.len() == 4)
        .and_then(|r| r.iter().map(Value::as_f64).collect());
    let Some([x0, y0, x1, y1]) = corners.as_deref().map(|c| [c[0], c[1], c[2], c[3]]) else {
        return Err(bad(
            "zoom needs region: [x1, y1, x2, y2] (top-left and bottom-right corners)",
        ));
    };
    if x1 <= x0 || y1 <= y0 {
        return Err(bad(format!(
            "zoom region [{x0}, {y0}, {x1}, {y1}] is empty: x2 must exceed x1 and y2 exceed y1"
        )));
    }
    let region = Region {
        x: x0,
        y: y0,
        width: x1 - x0,
        height: y1 - y0,
    };
    Ok(Mapped {
        steps: vec![Action::Zoom {
            region,
            scale: None,
        }],
        reply: Reply::Outcome,
    })
}

/// `scroll`: wheel clicks in one direction (3 unless `scroll_amount` says otherwise).
fn scroll(a: &Map<String, Value>) -> Result<Mapped, SessionError> {
    let amount = match a.get("scroll_amount") {
        None | Some(Value::Null) => 3,
        Some(v) => v.as_i64().ok_or_else(|| {
            bad(format!(
                "scroll_amount must be a whole number of wheel clicks, got {v}"
            ))
        })?,
    };
    let amount = check_range("scroll_amount", amount, (0, MAX_SCROLL_CLICKS.into()))? as i32;
    let (dx, dy) = match a.get("scroll_direction").and_then(Value::as_str) {
        Some("up") => (0, -amount),
        Some("down") => (0, amount),
        Some("left") => (-amount, 0),
        Some("right") => (amount, 0),
        other => {
            return Err(bad(format!(
                "scroll_direction must be up, down, left or right, got {other:?}"
            )))
        }
    };
    Ok(Mapped::then_look(Action::Scroll {
        at: point(a, "coordinate")?,
        dx,
        dy,
        modifiers: modifiers(a),
    }))
}
