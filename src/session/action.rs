//! What a tool call asks of a session ([`Action`]), checked into what the lane runs ([`Plan`])
//! by a pure step before any lock or side effect, and what comes back ([`Outcome`]).
//! Firecracker's `VmConfig::update() -> Result<_, VmConfigError>` is the shape: a request that
//! cannot run is refused before it queues behind anything.

use serde_json::{json, Value};

use super::error::{check_range, SessionError};
use crate::ledger::redact;
use crate::vm::input::{self, InputError, QCode};
use crate::vm::qga::ExecOutput;
use crate::vm::unicode::Piece;
use crate::vm::Button;

pub const MAX_WAIT_MS: u64 = 60_000;
pub const MAX_EXEC_TIMEOUT_MS: u64 = 300_000;
pub const DEFAULT_EXEC_TIMEOUT_MS: u64 = 30_000;
/// Combinations one `key` call may press: enough for "ctrl+a BackSpace"-style sequences, few
/// enough that one call holds the lane for about a second at most.
pub const MAX_KEY_COMBOS: usize = 32;
/// Longest `exec` command: a script, not a payload (files go in through the guest agent).
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;
pub const MAX_SCROLL_CLICKS: i32 = 50;

/// A point in the pixel space of the session's latest screenshot.
#[derive(Debug, Clone, Copy, serde::Serialize)]
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
        /// Keep the text out of the review ledger (its length only).
        secret: bool,
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

/// A checked action: every argument in range and parsed. Only coordinates are left to the lane,
/// since their valid range is the latest screenshot's size.
#[derive(Debug)]
pub enum Plan {
    Screenshot {
        scale: f64,
        max_width: Option<u32>,
    },
    Click {
        at: Point,
        button: Button,
        count: u32,
        modifiers: Vec<QCode>,
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
        pieces: Vec<Piece>,
    },
    Key {
        combos: Vec<Vec<QCode>>,
    },
    Wait {
        ms: u64,
        stable_timeout_ms: Option<u64>,
    },
    Exec {
        command: String,
        timeout_ms: u64,
    },
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
            Outcome::Done { message } => json!({ "ok": true, "message": message }),
            Outcome::Waited { waited_ms, stable } => {
                json!({ "waited_ms": waited_ms, "stable": stable })
            }
            Outcome::Exec(out) => serde_json::to_value(out).unwrap_or_default(),
        }
    }
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

    /// Whether the call carries text the ledger must not keep.
    pub fn is_secret(&self) -> bool {
        matches!(self, Action::Type { secret: true, .. })
    }

    /// Whether the action can change what the screen shows (a pointer that only moves can
    /// still light up what it hovers): the ledger then keeps the frames before and after it.
    pub fn changes_screen(&self) -> bool {
        matches!(
            self,
            Action::Click { .. }
                | Action::MouseMove { .. }
                | Action::Drag { .. }
                | Action::Scroll { .. }
                | Action::Type { .. }
                | Action::Key { .. }
                | Action::Exec { .. }
        )
    }

    /// The arguments as the review ledger keeps them: secrets reduced to their length, long
    /// text truncated with its length and hash.
    pub fn record(&self) -> Value {
        match self {
            Action::Screenshot { scale, max_width } => {
                json!({ "scale": scale, "max_width": max_width })
            }
            Action::Click {
                at,
                button,
                count,
                modifiers,
            } => {
                json!({ "x": at.x, "y": at.y, "button": button, "count": count, "modifiers": modifiers })
            }
            Action::MouseMove { to } => json!({ "x": to.x, "y": to.y }),
            Action::Drag { from, to, button } => {
                json!({ "from": from, "to": to, "button": button })
            }
            Action::Scroll { at, dx, dy } => json!({ "x": at.x, "y": at.y, "dx": dx, "dy": dy }),
            Action::Type { text, secret } => {
                json!({ "text": redact::text(text, *secret), "secret": secret })
            }
            Action::Key { keys } => json!({ "keys": redact::text(keys, false) }),
            Action::Wait {
                ms,
                until_stable,
                timeout_ms,
            } => json!({ "ms": ms, "until_stable": until_stable, "timeout_ms": timeout_ms }),
            Action::Exec {
                command,
                timeout_ms,
            } => json!({ "command": redact::text(command, false), "timeout_ms": timeout_ms }),
        }
    }

    /// Checks every argument that does not depend on the screen. Pure: no lock, no I/O.
    pub fn validate(&self) -> Result<Plan, SessionError> {
        Ok(match self {
            Action::Screenshot { scale, max_width } => {
                let scale = match *scale {
                    None => 1.0,
                    // Below 0.01 a 1280-pixel screen would be under 13 pixels wide.
                    Some(s) => check_range("scale", s, (0.01, 1.0))?,
                };
                if let Some(mw) = *max_width {
                    check_range("max_width", mw, (64, 7680))?;
                }
                Plan::Screenshot {
                    scale,
                    max_width: *max_width,
                }
            }
            Action::Click {
                at,
                button,
                count,
                modifiers,
            } => {
                check_range("count", *count, (1, 3))?;
                let mut mods = Vec::new();
                for m in modifiers {
                    mods.extend(input::parse_combo(m)?);
                }
                Plan::Click {
                    at: *at,
                    button: *button,
                    count: *count,
                    modifiers: mods,
                }
            }
            Action::MouseMove { to } => Plan::MouseMove { to: *to },
            Action::Drag { from, to, button } => Plan::Drag {
                from: *from,
                to: *to,
                button: *button,
            },
            Action::Scroll { at, dx, dy } => {
                check_range("dx", *dx, (-MAX_SCROLL_CLICKS, MAX_SCROLL_CLICKS))?;
                check_range("dy", *dy, (-MAX_SCROLL_CLICKS, MAX_SCROLL_CLICKS))?;
                Plan::Scroll {
                    at: *at,
                    dx: *dx,
                    dy: *dy,
                }
            }
            Action::Type { text, .. } => Plan::Type {
                pieces: crate::vm::unicode::pieces_for_text(text)?,
            },
            Action::Key { keys } => {
                let parts: Vec<&str> = keys.split_whitespace().collect();
                if parts.is_empty() {
                    return Err(InputError::EmptyCombo(keys.clone()).into());
                }
                check_range(
                    "number of key combinations",
                    parts.len(),
                    (1, MAX_KEY_COMBOS),
                )?;
                Plan::Key {
                    combos: parts
                        .into_iter()
                        .map(input::parse_combo)
                        .collect::<Result<_, _>>()?,
                }
            }
            Action::Wait {
                ms,
                until_stable,
                timeout_ms,
            } => {
                let ms = check_range(
                    "ms",
                    ms.unwrap_or(if *until_stable { 0 } else { 1000 }),
                    (0, MAX_WAIT_MS),
                )?;
                let t = check_range("timeout_ms", timeout_ms.unwrap_or(10_000), (0, MAX_WAIT_MS))?;
                Plan::Wait {
                    ms,
                    stable_timeout_ms: until_stable.then_some(t),
                }
            }
            Action::Exec {
                command,
                timeout_ms,
            } => {
                check_range(
                    "command length in bytes",
                    command.len(),
                    (1, MAX_COMMAND_BYTES),
                )?;
                Plan::Exec {
                    command: command.clone(),
                    timeout_ms: check_range(
                        "timeout_ms",
                        timeout_ms.unwrap_or(DEFAULT_EXEC_TIMEOUT_MS),
                        (1, MAX_EXEC_TIMEOUT_MS),
                    )?,
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(x: f64, y: f64) -> Point {
        Point { x, y }
    }

    fn refused(a: Action) -> serde_json::Value {
        a.validate().expect_err("should be refused").to_json()
    }

    #[test]
    fn out_of_range_arguments_are_refused_with_field_and_range() {
        let e = refused(Action::Click {
            at: at(1.0, 1.0),
            button: Button::Left,
            count: 7,
            modifiers: vec![],
        });
        assert_eq!(
            (e["field"].as_str(), e["valid"].as_str()),
            (Some("count"), Some("1..=3"))
        );
        let e = refused(Action::Wait {
            ms: Some(0),
            until_stable: true,
            timeout_ms: Some(90_000),
        });
        assert_eq!(e["field"], "timeout_ms");
        let e = refused(Action::Scroll {
            at: at(1.0, 1.0),
            dx: 0,
            dy: -51,
        });
        assert_eq!(
            (e["field"].as_str(), e["value"].as_str()),
            (Some("dy"), Some("-51"))
        );
        let e = refused(Action::Exec {
            command: "true".into(),
            timeout_ms: Some(0),
        });
        assert_eq!(e["valid"], "1..=300000");
        let e = refused(Action::Screenshot {
            scale: Some(f64::NAN),
            max_width: None,
        });
        assert_eq!(e["field"], "scale");
    }

    #[test]
    fn key_sequences_are_bounded_and_parsed_up_front() {
        let many = vec!["a"; MAX_KEY_COMBOS + 1].join(" ");
        let e = refused(Action::Key { keys: many });
        assert_eq!(e["valid"], format!("1..={MAX_KEY_COMBOS}"));
        let e = refused(Action::Key {
            keys: "ctrl+a ctrl+retrun".into(),
        });
        assert_eq!(e["error"], "unknown_key");
        assert_eq!(
            refused(Action::Key { keys: "  ".into() })["error"],
            "invalid_input"
        );
        match (Action::Key {
            keys: "ctrl+a BackSpace".into(),
        })
        .validate()
        .unwrap()
        {
            Plan::Key { combos } => assert_eq!(combos.len(), 2),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn wait_defaults() {
        match (Action::Wait {
            ms: None,
            until_stable: true,
            timeout_ms: None,
        })
        .validate()
        .unwrap()
        {
            Plan::Wait {
                ms,
                stable_timeout_ms,
            } => assert_eq!((ms, stable_timeout_ms), (0, Some(10_000))),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn secrets_never_reach_the_record() {
        let a = Action::Type {
            text: "hunter2-very-secret".into(),
            secret: true,
        };
        let rec = a.record().to_string();
        assert!(!rec.contains("hunter2"), "{rec}");
        assert!(rec.contains("\"length\":19"), "{rec}");
        let a = Action::Type {
            text: "visible".into(),
            secret: false,
        };
        assert_eq!(a.record()["text"], "visible");
    }
}
