//! Review bundles: a ledger copied into `exports/<name>/` with only relative references, so the
//! bundle can be moved, zipped or mailed: `review.json`, `timeline.jsonl`, `shots/`,
//! `index.html` (a viewer that opens from `file://` with no server, service worker or network)
//! and `<name>.html`, the same viewer with every picture inlined, as one file.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde_json::{json, Value};

use super::{capture_policy, ReviewMeta, TIMELINE};

use crate::storage::IoContext;

const VIEWER: &str = include_str!("viewer.html");

/// `<session>-<UTC time to the millisecond>`: sorts by time.
pub fn default_name(session_id: &str) -> String {
    format!("{session_id}-{}", super::now().replace(':', ""))
}

#[derive(Debug, Clone)]
pub struct Exported {
    pub name: String,
    pub dir: PathBuf,
    pub index: PathBuf,
    pub single_file: PathBuf,
    pub events: usize,
    pub steps: usize,
    pub failed: usize,
    pub shots: usize,
    pub missing_shots: usize,
    pub bytes: u64,
    /// Frames the timeline refers to, counted every time, and what they would take stored
    /// every time (no content addressing).
    pub frame_refs: usize,
    pub bytes_without_dedupe: u64,
}

impl Exported {
    /// Counts and names only: what the ledger records of an export (no server paths).
    pub fn summary(&self) -> Value {
        json!({
            "name": self.name,
            "events": self.events,
            "steps": self.steps,
            "failed": self.failed,
            "shots": self.shots,
            "missing_shots": self.missing_shots,
            "bytes": self.bytes,
        })
    }

    pub fn to_json(&self) -> Value {
        let mut v = self.summary();
        if let Value::Object(m) = &mut v {
            m.insert("dir".into(), self.dir.display().to_string().into());
            m.insert("index_html".into(), self.index.display().to_string().into());
            m.insert(
                "single_file_html".into(),
                self.single_file.display().to_string().into(),
            );
            m.insert("frame_refs".into(), self.frame_refs.into());
            m.insert(
                "bytes_without_dedupe".into(),
                self.bytes_without_dedupe.into(),
            );
        }
        v
    }
}

/// Whether `r` is a frame reference this format writes (`shots/<32 hex>.png`); anything else in
/// a timeline is never followed, so an export cannot be made to copy other files.
fn is_shot_ref(r: &str) -> bool {
    r.strip_prefix("shots/")
        .and_then(|f| f.strip_suffix(".png"))
        .is_some_and(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The events of a timeline: whole lines only (a server killed mid-write leaves at most one
/// partial line, which is dropped), up to `upto` bytes when given.
pub fn read_timeline(dir: &Path, upto: Option<u64>) -> io::Result<Vec<Value>> {
    let path = dir.join(TIMELINE);
    let mut bytes = std::fs::read(&path).at("reading the timeline", &path)?;
    if let Some(n) = upto {
        bytes.truncate(n as usize);
    }
    let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    Ok(String::from_utf8_lossy(&bytes[..whole])
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

fn frame_refs(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .flat_map(|e| ["before", "shot"].map(|k| e.get(k).and_then(Value::as_str)))
        .flatten()
        .filter(|r| is_shot_ref(r))
        .map(str::to_string)
        .collect()
}

/// The viewer page with `data` embedded (`<` escaped, so no string in it can end the script).
pub fn viewer_html(title: &str, data: &Value) -> String {
    let json = data.to_string().replace('<', "\\u003c");
    let title = title
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    VIEWER
        .replace("{{TITLE}}", &title)
        .replace("{{DATA}}", &json)
}

/// Writes the bundle `exports/<name>/` from the ledger in `review_dir` (copying `upto` bytes of
/// its timeline when given). Built under a hidden name and renamed into place: there is never a
/// half-written bundle. Fails with `AlreadyExists` rather than replace an export.
pub fn export(
    review_dir: &Path,
    exports: &Path,
    name: &str,
    upto: Option<u64>,
) -> io::Result<Exported> {
    let target = exports.join(name);
    if target.exists() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("an export named {name:?} exists; choose another name"),
        ));
    }
    crate::storage::private_dir(exports).at("creating the exports dir", exports)?;
    // Its own work dir: two exports of one name at once never touch each other's files.
    let tmp = exports.join(format!(".{name}.{:016x}.partial", rand::random::<u64>()));
    let shots = tmp.join(super::shots::SHOTS_DIR);
    std::fs::create_dir_all(&shots).at("creating the bundle's work dir", &shots)?;
    let result = write_bundle(review_dir, &tmp, &target, name, upto);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// Writes the bundle into `tmp` and renames it to `target`.
fn write_bundle(
    review_dir: &Path,
    tmp: &Path,
    target: &Path,
    name: &str,
    upto: Option<u64>,
) -> io::Result<Exported> {
    let session = review_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let meta =
        ReviewMeta::read(review_dir).unwrap_or_else(|_| ReviewMeta::new(&session, "session"));
    let events = read_timeline(review_dir, upto)?;
    let refs = frame_refs(&events);
    let shots = copy_shots(review_dir, tmp, &refs)?;
    super::kept::copy_kept(review_dir, tmp, &events)?;
    let bytes_without_dedupe = refs.iter().filter_map(|r| shots.sizes.get(r)).sum();
    let timeline = write_timeline(tmp, &events)?;
    let steps = Steps::of(&events);
    let mut review = serde_json::to_value(&meta).map_err(io::Error::other)?;
    describe(&mut review, name, &events, &steps, &refs, &shots);
    let pages = Pages {
        title: format!("deskvm review {}", meta.session_id),
        events: &events,
    };
    let inlined = Value::Object(shots.inlined);
    let bytes = shots.bytes
        + (timeline.len()
            + pages.render(json!({}), &review).len()
            + pages.render(inlined.clone(), &review).len()) as u64;
    if let Value::Object(m) = &mut review {
        m.insert(
            "bytes".into(),
            json!({ "total": bytes, "shots": shots.bytes, "timeline": timeline.len(), "without_dedupe": bytes_without_dedupe }),
        );
    }
    // Both pages again, now with the sizes in their header (each page is a few bytes longer
    // than the size it states, which counts the first rendering).
    pages.write(tmp, name, inlined, &review)?;
    let path = tmp.join("review.json");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&review).map_err(io::Error::other)?,
    )
    .at("writing", &path)?;
    publish(tmp, target, name)?;
    Ok(Exported {
        name: name.to_string(),
        index: target.join("index.html"),
        single_file: target.join(format!("{name}.html")),
        dir: target.to_path_buf(),
        events: events.len(),
        steps: steps.steps,
        failed: steps.failed,
        shots: shots.found,
        missing_shots: shots.missing.len(),
        bytes,
        frame_refs: refs.len(),
        bytes_without_dedupe,
    })
}

/// The frames a bundle carries.
struct Shots {
    /// Each frame found, as a `data:` URL for the single-file page.
    inlined: serde_json::Map<String, Value>,
    /// Each frame found, and its size.
    sizes: BTreeMap<String, u64>,
    /// Frames found: each stored once, however often the timeline refers to it.
    found: usize,
    /// Their bytes.
    bytes: u64,
    /// Frames the timeline refers to that the ledger no longer has.
    missing: Vec<String>,
}

/// Puts each distinct frame of `refs` into the bundle in `tmp`, and inlines it.
fn copy_shots(review_dir: &Path, tmp: &Path, refs: &[String]) -> io::Result<Shots> {
    let unique: BTreeSet<&String> = refs.iter().collect();
    let mut missing = Vec::new();
    let mut inlined = serde_json::Map::new();
    let mut sizes = BTreeMap::new();
    for r in &unique {
        let (src, dst) = (review_dir.join(r), tmp.join(r));
        match std::fs::read(&src) {
            Ok(png) => {
                // A hard link costs nothing; another filesystem gets a copy.
                if std::fs::hard_link(&src, &dst).is_err() {
                    std::fs::write(&dst, &png).at("writing", &dst)?;
                }
                sizes.insert((*r).clone(), png.len() as u64);
                let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
                inlined.insert((*r).clone(), format!("data:image/png;base64,{b64}").into());
            }
            Err(_) => missing.push((*r).clone()),
        }
    }
    Ok(Shots {
        inlined,
        found: unique.len() - missing.len(),
        bytes: sizes.values().sum(),
        sizes,
        missing,
    })
}

/// Writes the bundle's timeline, one event a line; returns what it wrote.
fn write_timeline(tmp: &Path, events: &[Value]) -> io::Result<String> {
    let mut timeline = String::new();
    for e in events {
        timeline.push_str(&e.to_string());
        timeline.push('\n');
    }
    let path = tmp.join(TIMELINE);
    std::fs::write(&path, &timeline).at("writing", &path)?;
    Ok(timeline)
}

/// The timeline's steps (every event but frames) and failures.
struct Steps {
    steps: usize,
    failed: usize,
}

impl Steps {
    fn of(events: &[Value]) -> Self {
        let kind = |e: &Value| e["kind"].as_str().unwrap_or_default().to_string();
        Steps {
            steps: events.iter().filter(|e| kind(e) != "frame").count(),
            failed: events
                .iter()
                .filter(|e| matches!(kind(e).as_str(), "action_failed" | "session_failed"))
                .count(),
        }
    }
}

/// Adds to the ledger's review metadata what the bundle holds: its name and time, the capture
/// policy, the counts and its files.
fn describe(
    review: &mut Value,
    name: &str,
    events: &[Value],
    steps: &Steps,
    refs: &[String],
    shots: &Shots,
) {
    if let Value::Object(m) = review {
        m.insert("exported_at".into(), super::now().into());
        m.insert("name".into(), name.into());
        m.insert("capture".into(), capture_policy());
        m.insert(
            "counts".into(),
            json!({ "events": events.len(), "steps": steps.steps, "failed": steps.failed, "shots": shots.found, "frame_refs": refs.len() }),
        );
        m.insert("missing_shots".into(), json!(shots.missing));
        m.insert(
            "files".into(),
            json!({ "timeline": TIMELINE, "shots": "shots/", "viewer": "index.html", "single_file": format!("{name}.html") }),
        );
    }
}

/// The bundle's two viewer pages: `index.html`, whose pictures are the files in `shots/`, and
/// `<name>.html`, with every picture inlined.
struct Pages<'a> {
    title: String,
    events: &'a [Value],
}

impl Pages<'_> {
    fn render(&self, shots: Value, review: &Value) -> String {
        viewer_html(
            &self.title,
            &json!({ "review": review, "events": self.events, "shots": shots }),
        )
    }

    fn write(&self, tmp: &Path, name: &str, inlined: Value, review: &Value) -> io::Result<()> {
        let (index, single) = (tmp.join("index.html"), tmp.join(format!("{name}.html")));
        std::fs::write(&index, self.render(json!({}), review)).at("writing", &index)?;
        std::fs::write(&single, self.render(inlined, review)).at("writing", &single)?;
        Ok(())
    }
}

/// Renames the finished bundle into place. rename(2) onto an existing non-empty directory
/// fails: a bundle is never replaced.
fn publish(tmp: &Path, target: &Path, name: &str) -> io::Result<()> {
    std::fs::rename(tmp, target).map_err(|e| match e.kind() {
        io::ErrorKind::DirectoryNotEmpty => io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("an export named {name:?} exists; choose another name"),
        ),
        _ => e,
    })
}

/// Who may see an exported bundle: `Some(token name)` (None: no token started it), or `None`
/// when `dir` is not a bundle.
pub fn bundle_owner(dir: &Path) -> Option<Option<String>> {
    let review: Value =
        serde_json::from_slice(&std::fs::read(dir.join("review.json")).ok()?).ok()?;
    review["format"]
        .as_str()?
        .starts_with("deskvm-review/")
        .then(|| review["token"].as_str().map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_shot_refs_are_followed() {
        assert!(is_shot_ref("shots/0123456789abcdef0123456789abcdef.png"));
        assert!(!is_shot_ref("shots/../../etc/passwd.png"));
        assert!(!is_shot_ref("/etc/passwd"));
        assert!(!is_shot_ref("shots/abc.png"));
    }

    #[test]
    fn the_viewer_cannot_be_closed_by_data() {
        let html = viewer_html("a<b", &json!({ "x": "</script><script>alert(1)</script>" }));
        assert!(!html.contains("</script><script>alert"));
        assert!(html.contains("a&lt;b"));
    }

    #[test]
    fn a_partial_last_line_is_dropped() {
        let dir = std::env::temp_dir().join(format!("deskvm-tl-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(TIMELINE), "{\"seq\":1}\n{\"seq\":2}\n{\"se").unwrap();
        assert_eq!(read_timeline(&dir, None).unwrap().len(), 2);
        assert_eq!(read_timeline(&dir, Some(10)).unwrap().len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
