//! Checks an [`Action`] into a [`Plan`]: every argument that does not depend on the screen.
//! Pure: no lock, no I/O.

use super::*;
use crate::session::error::{check_range, SessionError};
use crate::vm::input::{self, InputError};

fn modifiers(names: &[String]) -> Result<Vec<QCode>, SessionError> {
    let mut mods = Vec::new();
    for m in names {
        mods.extend(input::parse_combo(m)?);
    }
    Ok(mods)
}

impl Action {
    pub fn validate(&self) -> Result<Plan, SessionError> {
        Ok(match self {
            Action::Screenshot { scale, max_width } => screenshot(*scale, *max_width)?,
            Action::Zoom { region, scale } => {
                check_range("width", region.width, (1.0, f64::from(MAX_ZOOM_SIDE)))?;
                check_range("height", region.height, (1.0, f64::from(MAX_ZOOM_SIDE)))?;
                let scale = check_range("scale", scale.unwrap_or(1.0), (0.01, MAX_ZOOM_SCALE))?;
                Plan::Zoom {
                    region: *region,
                    scale,
                }
            }
            Action::CursorPosition => Plan::CursorPosition,
            Action::Click {
                at,
                button,
                count,
                modifiers: m,
            } => {
                check_range("count", *count, (1, 3))?;
                Plan::Click {
                    at: *at,
                    button: *button,
                    count: *count,
                    modifiers: modifiers(m)?,
                }
            }
            Action::MouseMove { to } => Plan::MouseMove { to: *to },
            Action::MouseButton { at, button, down } => Plan::MouseButton {
                at: *at,
                button: *button,
                down: *down,
            },
            Action::Drag {
                path,
                button,
                modifiers: m,
            } => {
                check_range("number of path points", path.len(), (2, MAX_DRAG_POINTS))?;
                Plan::Drag {
                    path: path.clone(),
                    button: *button,
                    modifiers: modifiers(m)?,
                }
            }
            Action::Scroll {
                at,
                dx,
                dy,
                modifiers: m,
            } => {
                check_range("dx", *dx, (-MAX_SCROLL_CLICKS, MAX_SCROLL_CLICKS))?;
                check_range("dy", *dy, (-MAX_SCROLL_CLICKS, MAX_SCROLL_CLICKS))?;
                Plan::Scroll {
                    at: *at,
                    dx: *dx,
                    dy: *dy,
                    modifiers: modifiers(m)?,
                }
            }
            Action::Type { text, .. } => Plan::Type {
                pieces: crate::vm::unicode::pieces_for_text(text)?,
            },
            Action::Key { keys, hold_ms } => key_combos(keys, *hold_ms)?,
            Action::Wait {
                ms,
                until_stable,
                timeout_ms,
            } => wait(*ms, *until_stable, *timeout_ms)?,
            Action::Exec {
                command,
                timeout_ms,
                root,
            } => exec(command, *timeout_ms, *root)?,
        })
    }
}

fn screenshot(scale: Option<f64>, max_width: Option<u32>) -> Result<Plan, SessionError> {
    let scale = match scale {
        None => 1.0,
        // Below 0.01 a 1280-pixel screen would be under 13 pixels wide.
        Some(s) => check_range("scale", s, (0.01, 1.0))?,
    };
    if let Some(mw) = max_width {
        check_range("max_width", mw, (64, 7680))?;
    }
    Ok(Plan::Screenshot { scale, max_width })
}

fn key_combos(keys: &str, hold_ms: Option<u64>) -> Result<Plan, SessionError> {
    let parts: Vec<&str> = keys.split_whitespace().collect();
    if parts.is_empty() {
        return Err(InputError::EmptyCombo(keys.to_string()).into());
    }
    check_range(
        "number of key combinations",
        parts.len(),
        (1, MAX_KEY_COMBOS),
    )?;
    let hold_ms = check_range("hold_ms", hold_ms.unwrap_or(0), (0, MAX_WAIT_MS))?;
    // One call holds the lane no longer than a wait may.
    check_range(
        "hold_ms x number of key combinations",
        hold_ms * parts.len() as u64,
        (0, MAX_WAIT_MS),
    )?;
    Ok(Plan::Key {
        combos: parts
            .into_iter()
            .map(input::parse_combo)
            .collect::<Result<_, _>>()?,
        hold_ms,
    })
}

fn wait(
    ms: Option<u64>,
    until_stable: bool,
    timeout_ms: Option<u64>,
) -> Result<Plan, SessionError> {
    let ms = check_range(
        "ms",
        ms.unwrap_or(if until_stable { 0 } else { 1000 }),
        (0, MAX_WAIT_MS),
    )?;
    let t = check_range("timeout_ms", timeout_ms.unwrap_or(10_000), (0, MAX_WAIT_MS))?;
    Ok(Plan::Wait {
        ms,
        stable_timeout_ms: until_stable.then_some(t),
    })
}

fn exec(command: &str, timeout_ms: Option<u64>, root: bool) -> Result<Plan, SessionError> {
    check_range(
        "command length in bytes",
        command.len(),
        (1, MAX_COMMAND_BYTES),
    )?;
    Ok(Plan::Exec {
        root,
        command: command.to_string(),
        timeout_ms: check_range(
            "timeout_ms",
            timeout_ms.unwrap_or(DEFAULT_EXEC_TIMEOUT_MS),
            (1, MAX_EXEC_TIMEOUT_MS),
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(x: f64, y: f64) -> Option<Point> {
        Some(Point { x, y })
    }

    fn refused(a: Action) -> serde_json::Value {
        a.validate().expect_err("should be refused").to_json()
    }

    fn key(keys: &str, hold_ms: Option<u64>) -> Action {
        Action::Key {
            keys: keys.into(),
            hold_ms,
        }
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
            modifiers: vec![],
        });
        assert_eq!(
            (e["field"].as_str(), e["value"].as_str()),
            (Some("dy"), Some("-51"))
        );
        let e = refused(Action::Scroll {
            at: None,
            dx: 0,
            dy: 1,
            modifiers: vec!["ctrl+hyper".into()],
        });
        assert_eq!(e["error"], "unknown_key");
        let e = refused(Action::Exec {
            command: "true".into(),
            timeout_ms: Some(0),
            root: false,
        });
        assert_eq!(e["valid"], "1..=300000");
        let e = refused(Action::Screenshot {
            scale: Some(f64::NAN),
            max_width: None,
        });
        assert_eq!(e["field"], "scale");
        let region = Region {
            x: 0.0,
            y: 0.0,
            width: 0.0,
            height: 10.0,
        };
        let e = refused(Action::Zoom {
            region,
            scale: None,
        });
        assert_eq!(e["field"], "width");
        let e = refused(Action::Zoom {
            region: Region {
                width: 10.0,
                ..region
            },
            scale: Some(9.0),
        });
        assert_eq!(
            (e["field"].as_str(), e["valid"].as_str()),
            (Some("scale"), Some("0.01..=8"))
        );
        let e = refused(Action::Drag {
            path: vec![Point { x: 1.0, y: 1.0 }],
            button: Button::Left,
            modifiers: vec![],
        });
        assert_eq!(e["valid"], format!("2..={MAX_DRAG_POINTS}"));
    }

    #[test]
    fn key_sequences_and_holds_are_bounded_and_parsed_up_front() {
        let many = vec!["a"; MAX_KEY_COMBOS + 1].join(" ");
        let e = refused(key(&many, None));
        assert_eq!(e["valid"], format!("1..={MAX_KEY_COMBOS}"));
        let e = refused(key("ctrl+a ctrl+retrun", None));
        assert_eq!(e["error"], "unknown_key");
        assert_eq!(refused(key("  ", None))["error"], "invalid_input");
        let e = refused(key("a b c", Some(30_000)));
        assert_eq!(e["field"], "hold_ms x number of key combinations");
        assert_eq!(refused(key("a", Some(60_001)))["field"], "hold_ms");
        match key("ctrl+a BackSpace", None).validate().unwrap() {
            Plan::Key { combos, hold_ms } => assert_eq!((combos.len(), hold_ms), (2, 0)),
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
}
