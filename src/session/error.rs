//! The one error type at the session boundary. Messages stay short and name the problem; causes
//! travel in `#[source]` and are rendered once, as a chain, by [`chain`].

use serde_json::{json, Value};
use thiserror::Error;

use crate::backend::BackendError;
use crate::guest_image::ImageError;
use crate::vm::input::InputError;
use crate::vm::VmError;

#[derive(Debug, Error)]
pub enum SessionError {
    #[error("unknown session {id:?}; {}", known_list(.known))]
    UnknownSession { id: String, known: Vec<String> },
    #[error("session {id} was stopped after {idle_s} s without a tool call (idle timeout {timeout_s} s); start a new one with session_start")]
    StoppedIdle {
        id: String,
        idle_s: u64,
        timeout_s: u64,
    },
    #[error("session {id} failed: {reason}. Its VM is gone; stop it with session_stop and start a new one")]
    Failed { id: String, reason: String },
    #[error("{field}={value} is out of range; valid: {valid}")]
    OutOfRange {
        field: &'static str,
        value: String,
        valid: String,
    },
    #[error("{what} ({x}, {y}) is outside the screen: x must be in 0..={max_x} and y in 0..={max_y} ({space})")]
    OffScreen {
        what: &'static str,
        x: f64,
        y: f64,
        max_x: u32,
        max_y: u32,
        space: String,
    },
    /// Arguments the protocol layer could not parse (no handler ran), or that do not fit
    /// together.
    #[error("{0}")]
    InvalidParams(String),
    #[error("unknown checkpoint {name:?}; {}", if .known.is_empty() { "there are none; make one with checkpoint".to_string() } else { format!("checkpoints: {}", .known.join(", ")) })]
    UnknownCheckpoint { name: String, known: Vec<String> },
    #[error("{what} is in use by {}", .by.join(", "))]
    InUse { what: String, by: Vec<String> },
    #[error("checkpoint {name} cannot run here: {why}")]
    Incompatible { name: String, why: String },
    #[error("{what} is not available on engine {engine}: checkpoints are files on this host, which that engine's containers do not see (pin a local engine with session_start's `engine`)")]
    NotOnEngine { what: &'static str, engine: String },
    #[error("no live view: {0}")]
    ViewUnavailable(String),
    #[error("forward {entry:?} refused: {why}")]
    ForwardRefused { entry: String, why: String },
    #[error("{path} already exists in the guest; pass overwrite: true to replace it")]
    Exists { path: String },
    #[error("{what} is unavailable: {why}")]
    Unavailable { what: &'static str, why: String },
    #[error("unknown {format} action {action:?}; supported: {}", .supported.join(", "))]
    UnknownAction {
        format: &'static str,
        action: String,
        supported: Vec<&'static str>,
    },
    #[error("invalid {field} {value:?}: {why}")]
    InvalidName {
        field: &'static str,
        value: String,
        why: String,
    },
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("the VM backend failed")]
    Backend(#[from] BackendError),
    #[error("VM error")]
    Vm(#[from] VmError),
    #[error("the client cancelled the call after {after_ms} ms{note}")]
    Cancelled { after_ms: u64, note: &'static str },
    #[error("session setup failed: {0}")]
    Setup(String),
    #[error("too many sessions: {max} are running; stop one first")]
    TooMany { max: usize },
    #[error("review ledger error")]
    Ledger(#[source] std::io::Error),
    /// A blocking step run off the async threads panicked or was cancelled.
    #[error("{what} did not finish")]
    Task {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    /// Names the operation and the path; the OS error is its source.
    #[error(transparent)]
    Io(#[from] crate::storage::IoError),
}

fn known_list(known: &[String]) -> String {
    if known.is_empty() {
        "no sessions are running; start one with session_start".into()
    } else {
        format!("running sessions: {}", known.join(", "))
    }
}

impl SessionError {
    /// A short machine-readable kind for structured error results and the ledger.
    pub fn kind(&self) -> &'static str {
        match self {
            SessionError::UnknownSession { .. } => "unknown_session",
            SessionError::Failed { .. } => "session_failed",
            SessionError::StoppedIdle { .. } => "session_stopped_idle",
            SessionError::OutOfRange { .. } | SessionError::OffScreen { .. } => "out_of_range",
            SessionError::InvalidName { .. } => "invalid_name",
            SessionError::InvalidParams(_) => "invalid_params",
            SessionError::UnknownAction { .. } => "unknown_action",
            SessionError::UnknownCheckpoint { .. } => "unknown_checkpoint",
            SessionError::InUse { .. } => "in_use",
            SessionError::Incompatible { .. } => "incompatible_checkpoint",
            SessionError::NotOnEngine { .. } => "not_on_engine",
            SessionError::ViewUnavailable(_) => "view_unavailable",
            SessionError::ForwardRefused { .. } => "forward_refused",
            SessionError::Exists { .. } => "exists",
            SessionError::Unavailable { .. } => "unavailable",
            SessionError::Input(InputError::UnknownKey { .. }) => "unknown_key",
            SessionError::Input(InputError::TextTooLong { .. }) => "text_too_long",
            SessionError::Input(_) => "invalid_input",
            SessionError::Image(_) => "image",
            SessionError::Backend(_) => "backend",
            SessionError::Vm(_) => "vm",
            SessionError::Setup(_) => "setup",
            SessionError::Cancelled { .. } => "cancelled",
            SessionError::TooMany { .. } => "too_many_sessions",
            SessionError::Ledger(_) => "ledger",
            SessionError::Io(_) => "io",
            SessionError::Task { .. } => "internal",
        }
    }

    /// `{error, message, ...}`: the kind, the whole cause chain, and for out-of-range values the
    /// field, the value given and the valid range, so a client can act without parsing text.
    pub fn to_json(&self) -> Value {
        let mut v = json!({ "error": self.kind(), "message": chain(self) });
        let extra = match self {
            SessionError::OutOfRange {
                field,
                value,
                valid,
            } => json!({ "field": field, "value": value, "valid": valid }),
            SessionError::OffScreen {
                x, y, max_x, max_y, ..
            } => {
                let field = if *x < 0.0 || *x > f64::from(*max_x) || !x.is_finite() {
                    "x"
                } else {
                    "y"
                };
                let (value, max) = if field == "x" { (x, max_x) } else { (y, max_y) };
                json!({ "field": field, "value": value.to_string(), "valid": format!("0..={max}") })
            }
            SessionError::InvalidName { field, value, .. } => {
                json!({ "field": field, "value": value })
            }
            SessionError::UnknownSession { known, .. } => json!({ "known": known }),
            SessionError::UnknownCheckpoint { known, .. } => json!({ "known": known }),
            SessionError::InUse { by, .. } => json!({ "used_by": by }),
            SessionError::UnknownAction {
                action, supported, ..
            } => json!({ "field": "action", "value": action, "valid": supported }),
            SessionError::Input(InputError::UnknownKey { suggestions, .. }) => {
                json!({ "suggestions": suggestions })
            }
            _ => Value::Null,
        };
        if let (Value::Object(v), Value::Object(extra)) = (&mut v, extra) {
            v.extend(extra);
        }
        v
    }
}

/// The error and its causes on one line, each said once ("VM error: could not read the
/// screendump: No such file or directory"). Cloud Hypervisor prints its chains this way.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(cause) = cur {
        let text = cause.to_string();
        // A transparent wrapper repeats its cause's text: say it once.
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = cause.source();
    }
    out
}

/// A value outside `lo..=hi`, as the error that names the field and the range.
pub fn check_range<T>(field: &'static str, v: T, (lo, hi): (T, T)) -> Result<T, SessionError>
where
    T: PartialOrd + std::fmt::Display + Copy,
{
    if v >= lo && v <= hi {
        Ok(v)
    } else {
        Err(SessionError::OutOfRange {
            field,
            value: v.to_string(),
            valid: format!("{lo}..={hi}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_say_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = SessionError::Vm(VmError::ScreenFile(io));
        assert_eq!(
            chain(&e),
            "VM error: could not read the screendump: no such file"
        );
        let e = SessionError::Input(InputError::EmptyCombo("".into()));
        assert_eq!(chain(&e), e.to_string());
    }

    #[test]
    fn out_of_range_is_structured() {
        let e = check_range("count", 7u32, (1, 3)).unwrap_err();
        let v = e.to_json();
        assert_eq!(v["error"], "out_of_range");
        assert_eq!(v["field"], "count");
        assert_eq!(v["value"], "7");
        assert_eq!(v["valid"], "1..=3");
        assert_eq!(v["message"], "count=7 is out of range; valid: 1..=3");
        assert!(check_range("count", 3u32, (1, 3)).is_ok());
    }
}
