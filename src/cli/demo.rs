//! `deskvm demo`: the main job. Drives the real server through an MCP client: start a
//! workstation desktop, open a local web page in Firefox, type a name into its form, look again,
//! and export the session's review (a bundle a person opens in a browser).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::json;

use crate::client::Client;

pub async fn run(out: &Path, server_args: &[String]) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let exe = std::env::current_exe()?;
    let args: Vec<&str> = server_args.iter().map(String::as_str).collect();
    let client = Client::spawn(&exe, &args, &[("RUST_LOG", "warn,qapi=error")]).await?;
    let t = Instant::now();
    let info = client
        .call_ok("session_start", json!({ "image": "workstation" }))
        .await?;
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

/// The page the demo opens: a form whose submit greets the name typed and puts the greeting
/// in the window's title, so the typing is checked from inside the guest too.
const DEMO_PAGE: &str = r#"<!doctype html><html><head><meta charset="utf-8"><title>deskvm demo</title>
<style>body{font:28px sans-serif;background:#f1f5f9;margin:48px}input{font:28px sans-serif;width:520px}
#out{margin-top:32px;font-size:44px;color:#1d4ed8}</style></head><body>
<h1>Hello from a deskvm desktop</h1><form onsubmit="var n=document.getElementById('name').value;
document.getElementById('out').textContent='Hello, '+n+'!';document.title='Hello, '+n;return false">
<label>Your name: <input id="name" autofocus></label></form><div id="out"></div></body></html>"#;

/// What the demo types into the form.
pub const DEMO_NAME: &str = "Ada Lovelace";

async fn shot(client: &Client, sid: &str, out: &Path, name: &str) -> Result<PathBuf> {
    let (png, _) = client.screenshot(sid, json!({})).await?;
    let path = out.join(name);
    std::fs::write(&path, png).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

async fn exec(client: &Client, sid: &str, command: &str) -> Result<String> {
    Ok(client.exec_stdout(sid, command).await?.trim().to_string())
}

/// The focused window's title once it contains `part` (3 minutes at most).
async fn wait_for_title(client: &Client, sid: &str, part: &str) -> Result<String> {
    let limit = std::time::Duration::from_secs(180);
    Ok(client.wait_for_title(sid, part, limit).await?.0)
}

/// Look at the desktop, write a page into the guest, open it in Firefox, type a name into its
/// form and submit, look again; the screenshots go to `out`. `t` is when `session_start` was
/// called.
async fn steps(client: &Client, sid: &str, out: &Path, t: Instant) -> Result<()> {
    let desktop = shot(client, sid, out, "1-desktop.png").await?;
    println!(
        "first screenshot {} ms after session_start: {}",
        t.elapsed().as_millis(),
        desktop.display()
    );
    exec(
        client,
        sid,
        &format!("cat > ~/Desktop/hello.html <<'EOF'\n{DEMO_PAGE}\nEOF"),
    )
    .await?;
    let opened = Instant::now();
    exec(
        client,
        sid,
        "setsid firefox-esr --new-window ~/Desktop/hello.html >/dev/null 2>&1 &",
    )
    .await?;
    let title = wait_for_title(client, sid, "deskvm demo").await?;
    client
        .call_ok(
            "wait",
            json!({ "session_id": sid, "ms": 1000, "until_stable": true }),
        )
        .await?;
    let page = shot(client, sid, out, "2-firefox.png").await?;
    println!(
        "Firefox showed the page ({title:?}) {:.1} s after it was launched (a cold start under this accelerator): {}",
        opened.elapsed().as_secs_f64(),
        page.display()
    );
    client
        .call_ok(
            "type",
            json!({ "session_id": sid, "text": format!("{DEMO_NAME}\n") }),
        )
        .await?;
    let greeted = wait_for_title(client, sid, &format!("Hello, {DEMO_NAME}")).await?;
    client
        .call_ok(
            "wait",
            json!({ "session_id": sid, "ms": 500, "until_stable": true }),
        )
        .await?;
    let typed = shot(client, sid, out, "3-typed.png").await?;
    println!(
        "typed {DEMO_NAME:?} into the form and pressed Enter; the page now says so ({greeted:?}): {}",
        typed.display()
    );
    Ok(())
}

/// `deskvm demo` without `--out`: `deskvm-demo` in the working directory.
pub fn default_demo_dir() -> PathBuf {
    std::env::current_dir()
        .unwrap_or_else(|_| PathBuf::from("."))
        .join("deskvm-demo")
}
