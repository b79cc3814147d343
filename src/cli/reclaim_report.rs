//! `deskvm reclaim`: the report (or with `--apply` the removal) printed for a person, or as
//! JSON. It works with no server running: the session's reclaim judges every owner itself
//! (`session::reclaim`), and the scan and removal are `storage::reclaim`'s.

use anyhow::Result;

use crate::session::reclaim::parse_older_than;
use crate::storage::reclaim::{self, Kind, Report, Request};
use crate::storage::usage::human;
use crate::storage::Layout;

/// `deskvm reclaim [--apply] [--kind K]... [--include EXPORT]... [--older-than D] [--json]`.
pub async fn run(
    apply: bool,
    kinds: Vec<Kind>,
    exports: Vec<String>,
    older_than: Option<String>,
    json: bool,
) -> Result<()> {
    let layout = Layout::from_env();
    let req = Request {
        apply,
        kinds: (!kinds.is_empty()).then_some(kinds),
        exports,
        older_than: older_than.as_deref().map(parse_older_than).transpose()?,
    };
    // The CLI is the machine's owner: it sees every token's exports.
    let report = crate::session::Caller::system()
        .scope(crate::session::reclaim::run(&layout, &req))
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    if report.failed.as_ref().is_some_and(|f| !f.is_empty()) {
        std::process::exit(2);
    }
    Ok(())
}

fn target(c: &reclaim::Candidate) -> String {
    let mut parts = Vec::new();
    if let Some(p) = &c.path {
        parts.push(p.display().to_string());
    }
    if let Some(n) = &c.container {
        parts.push(format!("container {n}"));
    }
    if let Some(p) = &c.process {
        parts.push(format!("QEMU pid {}", p.pid));
    }
    if let Some(i) = &c.image {
        parts.push(format!(
            "image {} {}",
            reclaim::short_id(i),
            c.tags.join(",")
        ));
    }
    parts.join(" + ")
}

fn print_report(r: &Report) {
    if r.docker.is_none() {
        println!("note: the Docker engine did not answer; containers and runtime images were not looked at");
    }
    match (&r.removed, &r.failed) {
        (Some(removed), Some(failed)) => print_applied(r, removed, failed),
        _ => print_candidates(r),
    }
    for n in &r.not_touched {
        println!("kept     {}: {}", n.what, n.why);
    }
    let u = &r.usage;
    println!(
        "on disk: guest images {}, ready states {}, checkpoints {} ({}), build work {}, sessions {} ({}), ledgers {} ({}), exports {} ({}), runtime images {} ({})",
        human(u.guest_images.bytes),
        human(u.ready_states.bytes),
        human(u.checkpoints.bytes),
        u.checkpoints.count,
        human(u.build_work.bytes),
        human(u.sessions.bytes),
        u.sessions.count,
        human(u.ledgers.bytes),
        u.ledgers.count,
        human(u.exports.bytes),
        u.exports.count,
        human(u.runtime_images.bytes),
        u.runtime_images.count
    );
    match &r.last_janitor {
        Some(j) => println!(
            "last janitor run: {} by instance {}: removed {}, failed {}, freed {}",
            j["at"].as_str().unwrap_or("?"),
            j["instance"].as_str().unwrap_or("?"),
            j["removed"].as_array().map_or(0, Vec::len),
            j["failed"].as_array().map_or(0, Vec::len),
            human(j["bytes_freed"].as_u64().unwrap_or(0))
        ),
        None => println!("last janitor run: none recorded"),
    }
}

/// `--apply`: each item removed or failed, then the totals.
fn print_applied(r: &Report, removed: &[reclaim::Removed], failed: &[reclaim::Failed]) {
    for x in removed {
        let what = format!("{} {}", x.item.kind.as_str(), target(&x.item));
        println!("removed  {:>10}  {what}", human(x.bytes_freed));
    }
    for f in failed {
        let what = format!("{} {}", f.item.kind.as_str(), target(&f.item));
        println!(
            "FAILED   {:>10}  {what}: {} ({} still held)",
            human(f.bytes_freed),
            f.error,
            human(f.bytes_remaining)
        );
    }
    println!(
        "reclaim --apply: removed {}, failed {}, freed {} ({} ms)",
        removed.len(),
        failed.len(),
        human(r.bytes_freed.unwrap_or(0)),
        r.took_ms
    );
}

/// A report: each candidate with why, then the totals.
fn print_candidates(r: &Report) {
    for c in &r.candidates {
        let session = c
            .session
            .as_deref()
            .map(|s| format!(" session {s}"))
            .unwrap_or_default();
        println!(
            "{:<15} {:>10}  {}{session}\n{:<28}why: {}",
            c.kind.as_str(),
            human(c.bytes),
            target(c),
            "",
            c.why
        );
    }
    println!(
        "reclaim report: {} candidate(s), {} ({} ms); `deskvm reclaim --apply` removes them",
        r.candidates.len(),
        human(r.candidate_bytes),
        r.took_ms
    );
}
