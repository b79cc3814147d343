//! OpenAI's computer-use actions (the Responses API `computer` tool and `computer_use_preview`)
//! onto session actions. Field names as OpenAI's SDK types define them; units the docs leave
//! open are chosen as the sample apps use them (see README, "Drop-in action formats").

use serde_json::{Map, Value};

use super::{Mapped, Reply};
use crate::session::action::MAX_SCROLL_CLICKS;
use crate::session::{check_range, Action, Point, SessionError};
use crate::vm::Button;

pub const ACTIONS: &[&str] = &[
    "click",
    "double_click",
    "drag",
    "keypress",
    "move",
    "scroll",
    "type",
    "wait",
    "screenshot",
];

/// Pixels of `scroll_x`/`scroll_y` per wheel click: a wheel click scrolls about three lines
/// of text in most programs.
pub const SCROLL_PX_PER_CLICK: f64 = 100.0;
/// What `wait` waits: OpenAI's sample app sleeps 1 s (the action has no duration).
pub const WAIT_MS: u64 = 1000;

fn bad(message: impl Into<String>) -> SessionError {
    SessionError::InvalidParams(message.into())
}

fn xy(a: &Map<String, Value>, action: &str) -> Result<Point, SessionError> {
    match (
        a.get("x").and_then(Value::as_f64),
        a.get("y").and_then(Value::as_f64),
    ) {
        (Some(x), Some(y)) => Ok(Point { x, y }),
        _ => Err(bad(format!("{action} needs x and y (numbers, in pixels)"))),
    }
}

/// Modifier keys held during a mouse action (`keys`, e.g. ["CTRL"]).
fn keys_held(a: &Map<String, Value>) -> Result<Vec<String>, SessionError> {
    match a.get("keys") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(k)) => k
            .iter()
            .map(|k| {
                k.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad(format!("keys must be strings, got {k}")))
            })
            .collect(),
        Some(other) => Err(bad(format!(
            "keys must be a list of key names, got {other}"
        ))),
    }
}

/// Wheel clicks for a scroll distance in pixels: at least one for any movement.
fn clicks(px: f64) -> i32 {
    if px == 0.0 || !px.is_finite() {
        return 0;
    }
    let n = (px.abs() / SCROLL_PX_PER_CLICK).round().max(1.0);
    (n.min(1e6) as i32) * px.signum() as i32
}

/// One OpenAI action as a session step and the reply's shape: one arm per action, with the
/// actions that check more than a field or two in their own functions.
pub fn map(a: &Map<String, Value>, secret: bool) -> Result<Mapped, SessionError> {
    let name = a
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("an OpenAI action needs \"type\" (a string)"))?;
    let step = match name {
        "screenshot" => Action::Screenshot {
            scale: None,
            max_width: None,
        },
        "click" | "double_click" => click(a, name)?,
        "drag" => drag(a)?,
        "keypress" => keypress(a)?,
        "move" => Action::MouseMove { to: xy(a, name)? },
        "scroll" => scroll(a, name)?,
        "type" => Action::Type {
            text: a
                .get("text")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("type needs text (a string)"))?
                .to_string(),
            secret,
        },
        "wait" => Action::Wait {
            ms: Some(WAIT_MS),
            until_stable: false,
            timeout_ms: None,
        },
        other => {
            return Err(SessionError::UnknownAction {
                format: "OpenAI computer-use",
                action: other.to_string(),
                supported: ACTIONS.to_vec(),
            })
        }
    };
    // Every OpenAI computer_call is answered with a screenshot.
    Ok(if name == "screenshot" {
        Mapped {
            steps: vec![step],
            reply: Reply::Outcome,
        }
    } else {
        Mapped::then_look(step)
    })
}

/// `click` and `double_click`, with any of OpenAI's five buttons named.
fn click(a: &Map<String, Value>, name: &str) -> Result<Action, SessionError> {
    Ok(Action::Click {
        button: button(a)?,
        at: Some(xy(a, name)?),
        count: if name == "double_click" { 2 } else { 1 },
        modifiers: keys_held(a)?,
    })
}

/// The guest's pointer has three buttons: back and forward are refused with the keys a
/// browser takes for them, so the agent can go on.
fn button(a: &Map<String, Value>) -> Result<Button, SessionError> {
    match a.get("button").and_then(Value::as_str).unwrap_or("left") {
        "left" => Ok(Button::Left),
        "right" => Ok(Button::Right),
        "wheel" | "middle" => Ok(Button::Middle),
        b @ ("back" | "forward") => Err(bad(format!(
            "button {b:?} cannot be clicked: the guest's pointer has three buttons; \
             for a browser's {b}, send keypress [\"ALT\", \"{}\"]",
            if b == "back" { "LEFT" } else { "RIGHT" }
        ))),
        other => Err(bad(format!(
            "button must be left, right, wheel, back or forward, got {other:?}"
        ))),
    }
}

/// `drag` along a path of {x, y} points.
fn drag(a: &Map<String, Value>) -> Result<Action, SessionError> {
    let path = a
        .get("path")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("drag needs path: [{\"x\": .., \"y\": ..}, ...]"))?;
    let path = path
        .iter()
        .map(|p| {
            p.as_object().map_or_else(
                || Err(bad("path points are {x, y}")),
                |p| xy(p, "a path point"),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Action::Drag {
        path,
        button: Button::Left,
        modifiers: keys_held(a)?,
    })
}

/// `keypress`: the keys are pressed together, as one combination.
fn keypress(a: &Map<String, Value>) -> Result<Action, SessionError> {
    let keys = keys_held(a)?;
    if keys.is_empty() {
        return Err(bad("keypress needs keys: a list such as [\"CTRL\", \"C\"]"));
    }
    Ok(Action::Key {
        keys: keys.join("+"),
        hold_ms: None,
    })
}

/// `scroll`: distances in pixels, turned into wheel clicks.
fn scroll(a: &Map<String, Value>, name: &str) -> Result<Action, SessionError> {
    let wheel = |f: &'static str| {
        let px = match a.get(f) {
            None | Some(Value::Null) => 0.0,
            Some(v) => v
                .as_f64()
                .ok_or_else(|| bad(format!("{f} must be a number of pixels, got {v}")))?,
        };
        let max = f64::from(MAX_SCROLL_CLICKS) * SCROLL_PX_PER_CLICK;
        check_range(f, px, (-max, max)).map(clicks)
    };
    Ok(Action::Scroll {
        at: Some(xy(a, name)?),
        dx: wheel("scroll_x")?,
        dy: wheel("scroll_y")?,
        modifiers: keys_held(a)?,
    })
}

#[cfg(test)]
mod tests {
    use super::clicks;

    #[test]
    fn scroll_pixels_become_wheel_clicks() {
        assert_eq!(clicks(0.0), 0);
        assert_eq!(clicks(3.0), 1);
        assert_eq!(clicks(-300.0), -3);
        assert_eq!(clicks(250.0), 3);
    }
}
