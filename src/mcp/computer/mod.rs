//! The `computer` tool: one action exactly as Anthropic's or OpenAI's computer-use emits it,
//! mapped onto the same session actions as the typed tools (each recorded in the ledger as
//! that action), and answered as those loops expect: a screenshot after the action.

mod anthropic;
mod openai;

use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock};
use rmcp::{tool, tool_router, ErrorData as McpError};
use serde_json::{json, Map, Value};

use super::params::{ActionFormat, ComputerArgs};
use super::tools::{tool_error, DeskvmServer};
use crate::ledger::redact;
use crate::session::{Action, Outcome, SessionError};

/// What one action becomes: the session actions to run in order, and how to answer.
#[derive(Debug)]
pub struct Mapped {
    pub steps: Vec<Action>,
    pub reply: Reply,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// The last step's own answer (a screenshot or a zoomed region).
    Outcome,
    /// A screenshot once the screen has settled after the steps.
    Screenshot,
    /// The pointer as text, `X=…,Y=…` (Anthropic's cursor_position).
    CursorText,
}

impl Mapped {
    fn then_look(step: Action) -> Self {
        Mapped {
            steps: vec![step],
            reply: Reply::Screenshot,
        }
    }
}

/// Longest wait for the screen to settle before the answer's screenshot. Anthropic's reference
/// sleeps a fixed 2 s; most actions settle in a fraction of that.
const SETTLE_TIMEOUT_MS: u64 = 2000;

fn format_of(
    action: &Map<String, Value>,
    given: Option<ActionFormat>,
) -> Result<ActionFormat, SessionError> {
    if let Some(f) = given {
        return Ok(f);
    }
    match (action.contains_key("action"), action.contains_key("type")) {
        (true, false) => Ok(ActionFormat::Anthropic),
        (false, true) => Ok(ActionFormat::Openai),
        _ => Err(SessionError::InvalidParams(
            "cannot tell the action's format: an Anthropic action has \"action\", an OpenAI one \
             \"type\"; or set format to \"anthropic\" or \"openai\""
                .into(),
        )),
    }
}

pub fn map(
    action: &Map<String, Value>,
    format: Option<ActionFormat>,
    secret: bool,
) -> Result<(ActionFormat, Mapped), SessionError> {
    let format = format_of(action, format)?;
    let mapped = match format {
        ActionFormat::Anthropic => anthropic::map(action, secret)?,
        ActionFormat::Openai => openai::map(action, secret)?,
    };
    Ok((format, mapped))
}

/// The call's arguments as a refusal records them: a secret's text reduced to its length.
fn recorded_args(a: &ComputerArgs) -> Value {
    let mut action = a.action.clone();
    if a.secret {
        if let Some(Value::String(t)) = action.get("text") {
            let r = redact::text(t, true);
            action.insert("text".into(), r);
        }
    }
    json!({ "session_id": a.session_id, "action": action, "format": a.format, "secret": a.secret })
}

#[tool_router(router = computer_router, vis = "pub(crate)")]
impl DeskvmServer {
    #[tool(
        description = "Run one action exactly as Anthropic's computer-use tool (computer_20251124: {\"action\": \"left_click\", \"coordinate\": [x, y]}, type, key, scroll, zoom, hold_key, ...) or OpenAI's computer-use ({\"type\": \"click\", \"button\": \"left\", \"x\": .., \"y\": ..}, keypress, drag with path, scroll with scroll_x/scroll_y, ...) emits it. Answers as those loops expect: a screenshot once the screen settles after the action (cursor_position: \"X=..,Y=..\"). Coordinates are pixels of the latest screenshot.",
        annotations(title = "Computer-use action", destructive_hint = false)
    )]
    async fn computer(
        &self,
        Parameters(a): Parameters<ComputerArgs>,
    ) -> Result<CallToolResult, McpError> {
        let (format, mapped) = match map(&a.action, a.format, a.secret) {
            Ok(m) => m,
            Err(e) => {
                let message = crate::session::chain(&e);
                self.manager
                    .record_refused_call("computer", &recorded_args(&a), &message)
                    .await;
                return Ok(tool_error(e));
            }
        };
        let started = std::time::Instant::now();
        // What the loop asked for, then (when it expects one) the settled screen to answer with.
        let names: Vec<&str> = mapped.steps.iter().map(Action::name).collect();
        let mut steps = mapped.steps;
        if mapped.reply == Reply::Screenshot {
            steps.push(Action::Wait {
                ms: Some(0),
                until_stable: true,
                timeout_ms: Some(SETTLE_TIMEOUT_MS),
            });
            steps.push(Action::Screenshot {
                scale: None,
                max_width: None,
            });
        }
        let mut looked = None;
        for step in steps {
            match self.manager.act(&a.session_id, step).await {
                Ok(o) => looked = Some(o),
                Err(e) => return Ok(tool_error(e)),
            }
        }
        let Some(outcome) = looked else {
            return Ok(tool_error(SessionError::InvalidParams(
                "the action ran no step".into(),
            )));
        };
        let ms = started.elapsed().as_millis() as u64;
        let format_name = match format {
            ActionFormat::Anthropic => "anthropic",
            ActionFormat::Openai => "openai",
        };
        let mut result = if mapped.reply == Reply::CursorText {
            let Outcome::Cursor { at, .. } = &outcome else {
                return Ok(tool_error(SessionError::InvalidParams(
                    "cursor_position gave no position".into(),
                )));
            };
            let mut r = CallToolResult::success(vec![ContentBlock::text(format!(
                "X={},Y={}",
                at.x.round(),
                at.y.round()
            ))]);
            r.structured_content = Some(outcome.to_json());
            r
        } else {
            super::calls::render(outcome, ms)
        };
        if let Some(Value::Object(m)) = result.structured_content.as_mut() {
            m.insert("format".into(), format_name.into());
            m.insert("ran".into(), json!(names));
        }
        Ok(result)
    }
}

#[cfg(test)]
mod tests;
