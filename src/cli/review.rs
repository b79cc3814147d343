//! `deskvm review`: the ledgers on disk, read without a server — so a review survives the
//! server that wrote it, even one killed with `kill -9`.

use anyhow::{bail, Context, Result};

use crate::ledger::export::{self, read_timeline};
use crate::ledger::ReviewMeta;
use crate::session::check_name;
use crate::storage::Layout;

pub fn list() -> Result<()> {
    let layout = Layout::from_env();
    let mut rows = Vec::new();
    for e in std::fs::read_dir(layout.reviews())
        .into_iter()
        .flatten()
        .flatten()
    {
        let dir = e.path();
        let Ok(meta) = ReviewMeta::read(&dir) else {
            continue;
        };
        let events = read_timeline(&dir, None).map(|v| v.len()).unwrap_or(0);
        let bytes = crate::storage::usage::disk_bytes(&dir);
        let age_days = std::fs::metadata(dir.join(crate::ledger::TIMELINE))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .map_or(0.0, |d| d.as_secs_f64() / 86_400.0);
        // A "running" ledger whose server is gone was never stopped: the server died.
        let state = if meta.state == "running"
            && crate::storage::Owner::read(&dir)
                .is_some_and(|o| o.liveness() != crate::storage::Liveness::Alive)
        {
            "ended (server gone)".to_string()
        } else {
            meta.state.clone()
        };
        let past = meta.state != "running" && age_days > meta.retention_days as f64;
        rows.push((
            meta.started_at.clone(),
            meta.session_id,
            meta.kind,
            state,
            events,
            bytes,
            age_days,
            past,
        ));
    }
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    println!(
        "{:<34} {:<8} {:<20} {:>7} {:>10} {:>8}  retention",
        "session", "kind", "state", "events", "bytes", "age (d)"
    );
    for (_, id, kind, state, events, bytes, age, past) in &rows {
        println!(
            "{id:<34} {kind:<8} {state:<20} {events:>7} {bytes:>10} {age:>8.1}  {}",
            if *past { "past (reclaimable)" } else { "kept" }
        );
    }
    println!(
        "{} ledger(s) in {}; exports in {}",
        rows.len(),
        layout.reviews().display(),
        layout.exports().display()
    );
    Ok(())
}

pub fn export(session_id: &str, name: Option<&str>) -> Result<()> {
    let layout = Layout::from_env();
    check_name("session_id", session_id)?;
    let dir = layout.reviews().join(session_id);
    if !dir.join(crate::ledger::TIMELINE).is_file() {
        bail!(
            "no review ledger for session {session_id:?} in {}; `deskvm review list` shows the ones there are",
            layout.reviews().display()
        );
    }
    let name = name
        .map(str::to_string)
        .unwrap_or_else(|| export::default_name(session_id));
    check_name("name", &name)?;
    let x = export::export(&dir, &layout.exports(), &name, None)
        .with_context(|| format!("exporting the review of {session_id}"))?;
    println!(
        "exported {} events ({} steps, {} failed, {} pictures{}), {} bytes",
        x.events,
        x.steps,
        x.failed,
        x.shots,
        if x.missing_shots > 0 {
            format!(", {} not saved", x.missing_shots)
        } else {
            String::new()
        },
        x.bytes
    );
    println!("open: {}", x.index.display());
    println!("single file: {}", x.single_file.display());
    Ok(())
}
