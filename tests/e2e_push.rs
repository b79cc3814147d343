//! `deskvm image push` to a second dockerd (tools/test-engine.sh: its own network namespace,
//! TLS only) that has never seen the guest image: it succeeds on the first try with progress
//! lines, and a push whose engine stops mid-transfer fails once nothing has moved for the stall
//! bound, saying so.

mod common;

use std::io::BufRead;
use std::time::Duration;

use anyhow::{Context, Result};
use common::engine::TestEngine;

#[tokio::test]
async fn a_push_to_an_engine_that_stops_fails_within_the_stall_bound() -> Result<()> {
    let engine = TestEngine::start("push1", 34)?;
    // A fresh engine: the whole guest image goes over, however long that takes.
    engine.push()?;

    // Again, with a short bound, and the engine's dockerd stopped once bytes are moving (so the
    // stall is the transfer's, not the connect's).
    let bound = Duration::from_secs(5);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_deskvm"))
        .args(["image", "push", "--engine", &engine.engine_arg()])
        .env("DESKVM_IMAGE", "minimal")
        .args(["--stall-timeout-s", &bound.as_secs().to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running deskvm image push")?;
    let stderr = child.stderr.take().context("stderr is piped")?;
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut said = Vec::new();
    loop {
        // A hang detector only (the guest image is built and up to date by now).
        let line = lines
            .recv_timeout(Duration::from_secs(300))
            .with_context(|| format!("no progress line from the push: {said:#?}"))?;
        let moving = engine.is_progress(&line);
        said.push(line);
        if moving {
            break;
        }
    }
    let paused = engine.pause_daemon()?;
    // A hang detector only: the stall bound is what should end it.
    let waited = tokio::task::spawn_blocking(move || child.wait());
    let status = tokio::time::timeout(Duration::from_secs(120), waited)
        .await
        .context("the push to a stopped engine never ended")???;
    let took = paused.at.elapsed();
    drop(paused);
    // The reader ends with the child's stderr: every line is in by now.
    said.extend(lines.iter());
    let said = said.join("\n");
    assert!(
        !status.success(),
        "the push to a stopped engine succeeded: {said}"
    );
    let error = format!("to engine {}", engine.name);
    assert!(
        said.contains(&error)
            && said.contains("no progress for 5 s after")
            && said.contains("the engine stopped reading"),
        "{said}"
    );
    // The bound, plus the watchdog's look every half second and the process's exit.
    assert!(
        took >= bound && took < bound + Duration::from_secs(5),
        "failed {took:?} after the engine stopped (bound {bound:?}): {said}"
    );
    let error: Vec<&str> = said
        .lines()
        .filter(|l| l.starts_with("Error:") || l.contains("no progress"))
        .map(str::trim)
        .collect();
    eprintln!(
        "push to a stopped engine failed {took:?} after SIGSTOP (bound {bound:?}): {}",
        error.join(" / ")
    );
    Ok(())
}
