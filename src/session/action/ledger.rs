//! An action's arguments as the review ledger keeps them.

use serde_json::{json, Value};

use super::Action;
use crate::ledger::redact;

impl Action {
    /// The arguments as the review ledger keeps them: secrets reduced to their length, long
    /// text truncated with its length and hash.
    pub fn record(&self) -> Value {
        match self {
            Action::Screenshot { scale, max_width } => {
                json!({ "scale": scale, "max_width": max_width })
            }
            Action::Zoom { region, scale } => json!({
                "x": region.x, "y": region.y, "width": region.width, "height": region.height,
                "scale": scale,
            }),
            Action::CursorPosition => json!({}),
            Action::Click {
                at,
                button,
                count,
                modifiers,
            } => json!({
                "x": at.map(|p| p.x), "y": at.map(|p| p.y), "button": button, "count": count,
                "modifiers": modifiers,
            }),
            Action::MouseMove { to } => json!({ "x": to.x, "y": to.y }),
            Action::MouseButton { at, button, .. } => {
                json!({ "x": at.map(|p| p.x), "y": at.map(|p| p.y), "button": button })
            }
            Action::Drag {
                path,
                button,
                modifiers,
            } => json!({ "path": path, "button": button, "modifiers": modifiers }),
            Action::Scroll {
                at,
                dx,
                dy,
                modifiers,
            } => json!({
                "x": at.map(|p| p.x), "y": at.map(|p| p.y), "dx": dx, "dy": dy,
                "modifiers": modifiers,
            }),
            Action::Type { text, secret } => {
                json!({ "text": redact::text(text, *secret), "secret": secret })
            }
            Action::Key { keys, hold_ms } => {
                json!({ "keys": redact::text(keys, false), "hold_ms": hold_ms })
            }
            Action::Wait {
                ms,
                until_stable,
                timeout_ms,
            } => json!({ "ms": ms, "until_stable": until_stable, "timeout_ms": timeout_ms }),
            Action::Exec {
                command,
                timeout_ms,
                root,
            } => {
                json!({ "command": redact::text(command, false), "timeout_ms": timeout_ms, "root": root })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
