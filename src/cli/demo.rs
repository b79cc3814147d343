//! `deskvm demo`: the main job. Drives the real server through an MCP client: start a session,
//! look, click into the terminal, type a command that visibly changes the desktop, look again,
//! and export the session's review (a bundle a person opens in a browser).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::json;

use crate::client::Client;
use crate::session::boot::TERMINAL_POINT;

pub const DEMO_COMMAND: &str =
    "xsetroot -solid '#2f6f4f'; (xclock -geometry 220x220-40-40 -update 1 &); echo 'hello from deskvm'\n";

pub async fn run(out: &Path, server_args: &[String]) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let exe = std::env::current_exe()?;
    let args: Vec<&str> = server_args.iter().map(String::as_str).collect();
    let client = Client::spawn(&exe, &args, &[("RUST_LOG", "warn,qapi=error")]).await?;
    let t = Instant::now();
    let info = client.call_ok("session_start", json!({})).await?;
    let sid = info["session_id"]
        .as_str()
        .context("session_start returned no session_id")?
        .to_string();
    println!(
        "session {sid}: {}x{} on {} ({}), started from {} in {} ms",
        info["width"],
        info["height"],
        info["backend"],
        info["accelerator"],
        info["startup"],
        info["startup_ms"]
    );
    let result = steps(&client, &sid, out, t).await;
    client
        .call_ok("session_stop", json!({ "session_id": sid }))
        .await?;
    // Exported after the stop, so the review holds the whole session, stop included.
    let review = client
        .call_ok("export_review", json!({ "session_id": sid }))
        .await;
    client.close().await?;
    result?;
    let review = review?;
    println!("session stopped. Screenshots: {}", out.display());
    println!(
        "review: {} steps, {} pictures, {} bytes; open in a browser: {}",
        review["steps"],
        review["shots"],
        review["bytes"],
        review["index_html"].as_str().unwrap_or("?")
    );
    println!(
        "        one file to attach or mail: {}",
        review["single_file_html"].as_str().unwrap_or("?")
    );
    Ok(())
}

/// Look, click into the terminal, type [`DEMO_COMMAND`], wait for the screen to settle, look
/// again; the screenshots go to `out`. `t` is when `session_start` was called.
async fn steps(client: &Client, sid: &str, out: &Path, t: Instant) -> Result<()> {
    let (png, _) = client.screenshot(sid, json!({})).await?;
    let before = out.join("1-before.png");
    std::fs::write(&before, png)?;
    println!(
        "first screenshot {} ms after session_start: {}",
        t.elapsed().as_millis(),
        before.display()
    );

    client
        .call_ok(
            "click",
            json!({ "session_id": sid, "x": TERMINAL_POINT.0, "y": TERMINAL_POINT.1 }),
        )
        .await?;
    client
        .call_ok("type", json!({ "session_id": sid, "text": DEMO_COMMAND }))
        .await?;
    println!(
        "clicked into the terminal and typed: {}",
        DEMO_COMMAND.trim_end()
    );
    let waited = client
        .call_ok(
            "wait",
            json!({ "session_id": sid, "ms": 2000, "until_stable": true }),
        )
        .await?;
    let (png, _) = client.screenshot(sid, json!({})).await?;
    let after = out.join("2-after.png");
    std::fs::write(&after, png)?;
    println!(
        "screen settled (stable: {}); second screenshot: {}",
        waited["stable"],
        after.display()
    );
    Ok(())
}

/// `deskvm demo` without `--out`: `deskvm-demo` in the working directory.
pub fn default_demo_dir() -> PathBuf {
    std::env::current_dir()
        .unwrap_or_else(|_| PathBuf::from("."))
        .join("deskvm-demo")
}
