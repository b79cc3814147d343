//! Calls on record: the event each call writes to a review ledger, the server's own ledger for
//! calls that name no running session, and exports.
//!
//! A failed ledger write never fails a call that has run (an agent would repeat it): it is
//! logged with tracing. Only a call whose record is its purpose (`session_start`, whose id
//! the ledger names) raises [`SessionError::Ledger`].

use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};

use super::geometry::Trace;
use super::{check_name, Session, SessionError, SessionManager};
use crate::ledger::export::{self, Exported};
use crate::ledger::{redact, Ledger, ReviewMeta};
use crate::storage::IoError;

/// What the ledger keeps of a call besides tool, arguments and outcome.
#[derive(Default)]
pub struct Extra {
    pub trace: Trace,
    pub before: Option<String>,
    pub shot: Option<String>,
    /// The call carried a secret: an error message, which may quote the input, is withheld.
    pub secret: bool,
}

/// Appends a call's event: `kind` (or `action`/`action_failed` when empty), tool, arguments,
/// outcome or error, duration, pointer and frames.
pub fn append_call(
    ledger: &Ledger,
    kind: &str,
    tool: &str,
    args: Value,
    outcome: Result<&Value, &SessionError>,
    started: Instant,
    extra: &Extra,
) -> std::io::Result<u64> {
    let kind = match (kind, &outcome) {
        ("", Ok(_)) => "action",
        ("", Err(_)) => "action_failed",
        (k, _) => k,
    };
    let (outcome, error) = match outcome {
        Ok(v) => (Some(redact::outcome(v)), None),
        Err(e) if extra.secret => (
            None,
            Some(
                json!({ "error": e.kind(), "message": "withheld from the review: it could quote the secret text" }),
            ),
        ),
        Err(e) => (None, Some(e.to_json())),
    };
    let xy = |(x, y): (u32, u32)| json!({ "x": x, "y": y });
    // Arguments left out are left out of the record too.
    let args = match args {
        Value::Object(m) => Value::Object(m.into_iter().filter(|(_, v)| !v.is_null()).collect()),
        other => other,
    };
    ledger.append(
        kind,
        json!({
            "tool": tool,
            "args": args,
            "outcome": outcome,
            "error": error,
            "duration_ms": started.elapsed().as_millis() as u64,
            "pointer": extra.trace.pointer.map(xy),
            "path": extra.trace.path.as_ref().map(|p| p.iter().copied().map(xy).collect::<Vec<_>>()),
            "region": extra.trace.region.map(|(x, y, w, h)| json!({ "x": x, "y": y, "width": w, "height": h })),
            "before": extra.before,
            "shot": extra.shot,
        }),
    )
}

/// Records a call refused before any handler ran: `args` as the client sent them (redacted).
pub fn append_refused(ledger: &Ledger, tool: &str, raw_args: &Value, message: &str) {
    let args = redact::raw_args(raw_args);
    let extra = Extra {
        secret: redact::has_secret(raw_args),
        ..Extra::default()
    };
    let e = SessionError::InvalidParams(message.to_string());
    if let Err(e) = append_call(ledger, "", tool, args, Err(&e), Instant::now(), &extra) {
        tracing::error!(error = %e, tool, "could not record a refused call in the review ledger");
    }
}

impl Session {
    pub(super) fn record_ok(
        &self,
        kind: &str,
        tool: &str,
        args: Value,
        outcome: Value,
        started: Instant,
    ) -> Result<u64, SessionError> {
        append_call(
            &self.ledger,
            kind,
            tool,
            args,
            Ok(&outcome),
            started,
            &Extra::default(),
        )
        .map_err(SessionError::Ledger)
    }
}

impl SessionManager {
    /// Records a call on a running session in its ledger. A failed write is logged, not raised:
    /// the call has run, and failing it now would make an agent repeat it.
    pub(super) fn record_on(
        &self,
        session: &Session,
        tool: &str,
        args: Value,
        r: Result<&Value, &SessionError>,
        started: Instant,
    ) {
        let recorded = append_call(
            &session.ledger,
            "",
            tool,
            args,
            r,
            started,
            &Default::default(),
        );
        if let Err(e) = recorded {
            tracing::error!(error = %e, tool, "could not record a call in the review ledger");
        }
    }

    /// Runs `call` on the running session `id` and records it in its ledger as `tool`: for the
    /// calls whose work a room above the session does (the view's `session_view`), so that room
    /// needs no way into the ledger. Of a success the ledger keeps what `kept` returns (a view
    /// link's token must stay out of the review).
    pub async fn call_recorded(
        &self,
        tool: &str,
        id: &str,
        args: Value,
        call: impl FnOnce(&Arc<Session>) -> Result<Value, SessionError>,
        kept: impl FnOnce(&Value) -> Value,
    ) -> Result<Value, SessionError> {
        let started = Instant::now();
        let session = self.session_for(tool, id, &args, started).await?;
        let result = call(&session);
        let outcome = result.as_ref().map(kept);
        self.record_on(
            &session,
            tool,
            args,
            outcome.as_ref().map_err(|e| *e),
            started,
        );
        result
    }

    /// Exports the review of a running, stopped or failed session into the exports dir.
    pub async fn export_review(
        &self,
        id: &str,
        name: Option<&str>,
    ) -> Result<Exported, SessionError> {
        let started = Instant::now();
        let args = json!({ "name": name });
        let name = name
            .map(str::to_string)
            .unwrap_or_else(|| export::default_name(id));
        let running = self.get(id).await;
        let dir = self.cfg.layout.reviews().join(id);
        let result = self.export_inner(id, &name, &running, &dir).await;
        let summary = result.as_ref().map(Exported::summary);
        let outcome = summary.as_ref().map_err(|e| *e);
        match &running {
            Ok(s) => self.record_on(s, "export_review", args, outcome, started),
            // A session not running here has no writer of its ledger in this process; its
            // export is recorded with the server's calls.
            Err(_) => {
                let args = json!({ "session_id": id, "args": args });
                self.record_server("export_review", args, outcome, started);
            }
        }
        result
    }

    async fn export_inner(
        &self,
        id: &str,
        name: &str,
        running: &Result<Arc<Session>, SessionError>,
        dir: &std::path::Path,
    ) -> Result<Exported, SessionError> {
        check_name("session_id", id)?;
        check_name("name", name)?;
        let upto = match running {
            Ok(s) => {
                // A consistent snapshot: the timeline up to the events written so far, and
                // every frame those events refer to on disk before it is copied.
                let upto = s.ledger.timeline_len();
                s.ledger.shots.flush().await;
                // Logged, not raised: the export still holds every event and frame; only its
                // summary (session.json) may lag behind them.
                if let Err(e) = s.ledger.save_meta() {
                    tracing::error!(error = %e, session = %id, "could not save the review's summary before exporting it");
                }
                Some(upto)
            }
            // Not running here: its ledger on disk, if this caller may see it (a session
            // another token started is as unknown as one that never was).
            Err(e) => {
                let visible =
                    ReviewMeta::read(dir).is_ok_and(|m| super::Caller::current().sees(&m.token));
                if visible && dir.join(crate::ledger::TIMELINE).is_file() {
                    None
                } else {
                    return Err(match e {
                        SessionError::UnknownSession { id, known } => {
                            SessionError::UnknownSession {
                                id: id.clone(),
                                known: known.clone(),
                            }
                        }
                        _ => SessionError::UnknownSession {
                            id: id.to_string(),
                            known: Vec::new(),
                        },
                    });
                }
            }
        };
        let (dir, exports, name_owned) = (
            dir.to_path_buf(),
            self.cfg.layout.exports(),
            name.to_string(),
        );
        let done =
            tokio::task::spawn_blocking(move || export::export(&dir, &exports, &name_owned, upto))
                .await
                .map_err(|source| SessionError::Task {
                    what: "the export",
                    source,
                })?;
        let bundle = self.cfg.layout.exports().join(name);
        done.map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => SessionError::InvalidName {
                field: "name",
                value: name.to_string(),
                why: "an export of that name exists; choose another name".into(),
            },
            _ => IoError::new("exporting the review to", &bundle, e).into(),
        })
    }

    fn server_ledger(&self) -> Option<&Arc<Ledger>> {
        self.server_ledger
            .get_or_init(|| {
                let id = format!("server-{}-{:08x}", std::process::id(), rand::random::<u32>());
                let dir = self.cfg.layout.reviews().join(&id);
                Ledger::create(&dir, ReviewMeta::new(&id, "server"))
                    .inspect_err(|e| tracing::warn!(error = %e, "could not create the server's review ledger"))
                    .ok()
                    .map(Arc::new)
            })
            .as_ref()
    }

    /// Records a call that reached no running session.
    pub fn record_server(
        &self,
        tool: &str,
        args: serde_json::Value,
        outcome: Result<&serde_json::Value, &SessionError>,
        started: Instant,
    ) {
        let Some(l) = self.server_ledger() else {
            return;
        };
        // Logged, not raised: these calls have run (or been refused) whatever the record says.
        if let Err(e) = append_call(l, "", tool, args, outcome, started, &Default::default()) {
            tracing::error!(error = %e, tool, "could not record a call in the server's review ledger");
        }
    }

    /// Records a call refused before any handler ran (malformed arguments, unknown tool): in the
    /// ledger of the session it names when there is one, else in the server's.
    pub async fn record_refused_call(
        &self,
        tool: &str,
        raw_args: &serde_json::Value,
        message: &str,
    ) {
        let id = raw_args.get("session_id").and_then(|v| v.as_str());
        let session = match id {
            Some(id) => self.get(id).await.ok(),
            None => None,
        };
        let ledger = session
            .map(|s| s.ledger.clone())
            .or_else(|| self.server_ledger().cloned());
        if let Some(l) = ledger {
            append_refused(&l, tool, raw_args, message);
        }
    }
}
