//! The sparse review ledger: per session, one `timeline.jsonl` (one event a line, `seq` 1..n
//! with no gaps) and content-addressed frames under `shots/`, kept under the data dir's
//! `reviews/<session>/` so that stopping a session does not remove its record.
//!
//! One writer per ledger: events are numbered and appended under one lock, each written with
//! one `write(2)` before the tool reply goes out, so a crash of the server (even `kill -9`)
//! keeps every answered call. (No fsync per event: that guards against power loss, not crashes,
//! and would cost milliseconds per call.)

pub mod export;
pub mod kept;
pub mod redact;
pub mod shots;

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::storage;
use crate::storage::IoContext;
use shots::ShotStore;

pub const FORMAT: &str = "deskvm-review/1";
pub const TIMELINE: &str = "timeline.jsonl";
pub const META: &str = "session.json";

/// How frames are captured; written into every review so a reader knows what is missing.
pub fn capture_policy() -> Value {
    json!({
        "mode": "sparse",
        "before": "the screen before each action that can change it (click, mouse_move, drag, scroll, type, key, exec); the latest frame is reused when nothing can have changed it since",
        "after": "the screen once it stopped changing after such an action (two equal frames 250 ms apart), at most 1.5 s after it; if the next call comes first, the first frame that call looks at",
        "screenshots": "every screenshot an agent took, at full resolution",
        "dedupe": "a frame is stored once, named by a hash of its pixels",
        "secrets": "type with secret=true keeps only the text's length",
        "truncation": format!("text longer than {} characters keeps its head, length and sha256", redact::MAX_TEXT_IN_LEDGER),
    })
}

pub fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// `session.json`: what the ledger is a record of.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReviewMeta {
    pub format: String,
    pub session_id: String,
    /// "session", or "server" for calls that named no running session.
    pub kind: String,
    pub image: Option<String>,
    pub backend: Option<String>,
    pub accelerator: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub started_at: String,
    pub ended_at: Option<String>,
    /// "running", "stopped" or "failed".
    pub state: String,
    /// Days a stopped session's ledger is kept; past that `deskvm review list` marks it
    /// reclaimable (nothing deletes a ledger by itself).
    pub retention_days: u64,
    pub server_pid: u32,
    #[serde(default)]
    pub reply_overhead_us: Option<Value>,
    /// The name of the token that started the session (HTTP with tokens): only that token
    /// exports it, lists its bundles and opens them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl ReviewMeta {
    pub fn new(session_id: &str, kind: &str) -> Self {
        ReviewMeta {
            format: FORMAT.into(),
            session_id: session_id.into(),
            kind: kind.into(),
            image: None,
            backend: None,
            accelerator: None,
            width: None,
            height: None,
            started_at: now(),
            ended_at: None,
            state: "running".into(),
            retention_days: retention_days(),
            server_pid: std::process::id(),
            reply_overhead_us: None,
            token: None,
        }
    }

    pub fn read(dir: &Path) -> io::Result<Self> {
        let path = dir.join(META);
        let bytes = std::fs::read(&path).at("reading", &path)?;
        serde_json::from_slice(&bytes)
            .map_err(io::Error::other)
            .at("parsing", &path)
            .map_err(io::Error::from)
    }
}

/// `DESKVM_REVIEW_RETENTION_DAYS`, default 14.
pub fn retention_days() -> u64 {
    std::env::var("DESKVM_REVIEW_RETENTION_DAYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(14)
}

struct Writer {
    file: File,
    seq: u64,
    len: u64,
}

pub struct Ledger {
    pub dir: PathBuf,
    pub shots: ShotStore,
    writer: Mutex<Writer>,
    meta: Mutex<ReviewMeta>,
    /// Per call: time the ledger added to the reply, in µs.
    overhead_us: Mutex<Vec<u32>>,
}

impl Ledger {
    /// Creates (or continues) the ledger in `dir`, a deskvm-owned private directory.
    pub fn create(dir: &Path, meta: ReviewMeta) -> io::Result<Self> {
        let owner = storage::Owner::me("ledger", Some(&meta.session_id));
        storage::owned_dir(dir, &owner)?;
        let path = dir.join(TIMELINE);
        let seq = match File::open(&path) {
            Ok(f) => io::BufReader::new(f).lines().count() as u64,
            Err(_) => 0,
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .at("opening the timeline", &path)?;
        let len = file.metadata().at("reading the size of", &path)?.len();
        let ledger = Ledger {
            dir: dir.to_path_buf(),
            shots: ShotStore::open(&dir.join(shots::SHOTS_DIR))?,
            writer: Mutex::new(Writer { file, seq, len }),
            meta: Mutex::new(meta),
            overhead_us: Mutex::new(Vec::new()),
        };
        ledger.save_meta()?;
        Ok(ledger)
    }

    /// Appends one event (`seq`, `at`, `kind`, then `fields`) and returns its seq.
    pub fn append(&self, kind: &str, fields: Value) -> io::Result<u64> {
        let mut w = self.writer.lock().expect("ledger writer poisoned");
        let seq = w.seq + 1;
        let mut event = Map::new();
        event.insert("seq".into(), seq.into());
        event.insert("at".into(), now().into());
        event.insert("kind".into(), kind.into());
        if let Value::Object(f) = fields {
            event.extend(f.into_iter().filter(|(_, v)| !v.is_null()));
        }
        let mut line = serde_json::to_vec(&event).map_err(io::Error::other)?;
        line.push(b'\n');
        w.file.write_all(&line)?;
        w.seq = seq;
        w.len += line.len() as u64;
        Ok(seq)
    }

    /// Bytes of the timeline written so far: an export of a running session copies this much.
    pub fn timeline_len(&self) -> u64 {
        self.writer.lock().expect("ledger writer poisoned").len
    }

    pub fn note_overhead(&self, d: Duration) {
        self.overhead_us
            .lock()
            .expect("overhead list poisoned")
            .push(d.as_micros().min(u32::MAX as u128) as u32);
    }

    fn overhead_summary(&self) -> Option<Value> {
        let mut v = self
            .overhead_us
            .lock()
            .expect("overhead list poisoned")
            .clone();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let pct = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
        Some(json!({ "n": v.len(), "p50": pct(0.5), "p95": pct(0.95), "max": v[v.len() - 1] }))
    }

    pub fn update_meta(&self, f: impl FnOnce(&mut ReviewMeta)) -> io::Result<()> {
        f(&mut self.meta.lock().expect("meta poisoned"));
        self.save_meta()
    }

    /// Writes `session.json` (atomically: a reader never sees half of it).
    pub fn save_meta(&self) -> io::Result<()> {
        let mut meta = self.meta.lock().expect("meta poisoned").clone();
        meta.reply_overhead_us = self.overhead_summary();
        let tmp = self.dir.join(format!("{META}.tmp"));
        let named = |op: &str, e: io::Error| io::Error::new(e.kind(), format!("{op}: {e}"));
        let json = serde_json::to_vec_pretty(&meta).map_err(io::Error::other)?;
        std::fs::write(&tmp, json).map_err(|e| named(&format!("writing {}", tmp.display()), e))?;
        let path = self.dir.join(META);
        std::fs::rename(&tmp, &path)
            .map_err(|e| named(&format!("renaming to {}", path.display()), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn concurrent_appends_number_events_without_gaps() {
        let dir = std::env::temp_dir().join(format!("deskvm-ledger-{}", rand::random::<u64>()));
        let ledger = Arc::new(Ledger::create(&dir, ReviewMeta::new("t", "session")).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let l = ledger.clone();
                std::thread::spawn(move || {
                    for j in 0..50 {
                        l.append(
                            "action",
                            json!({ "tool": "click", "i": i, "j": j, "none": null }),
                        )
                        .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let text = std::fs::read_to_string(dir.join(TIMELINE)).unwrap();
        let seqs: Vec<u64> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["seq"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(seqs, (1..=400).collect::<Vec<_>>());
        assert!(!text.contains("\"none\""), "null fields are left out");
        assert_eq!(ledger.timeline_len(), text.len() as u64);
        // Continuing a ledger continues its numbering.
        drop(ledger);
        let again = Ledger::create(&dir, ReviewMeta::new("t", "session")).unwrap();
        assert_eq!(again.append("action", json!({})).unwrap(), 401);
        assert_eq!(ReviewMeta::read(&dir).unwrap().session_id, "t");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
