//! The `workstation` image on a real guest, on both backends: Firefox shows a page the test
//! wrote (its title is the active window's), a fork of a checkpoint taken with Firefox open
//! shows Firefox in its first screenshot, LibreOffice Calc opens a CSV and saves it as .ods
//! by keyboard alone, and CJK and emoji typed into the text editor are saved byte-exact.
//! `exec` runs as the desktop's user `user` unless asked for root. A service of the host,
//! forwarded into a guest with no network, opens in Firefox; mixed-script text goes through the
//! clipboard into Mousepad and back.

mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use common::*;
use deskvm::client::Client;
use serde_json::json;

/// Heavy applications under TCG: one workstation test at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const PAGE: &str = r#"<!doctype html><html><head><meta charset="utf-8"><title>deskvm test page</title></head>
<body style="background:#1d4ed8;color:white;font:32px sans-serif"><h1>Hello from deskvm</h1>
<form><input id="q" name="q" autofocus></form></body></html>"#;

async fn start_workstation(c: &Client) -> Result<String> {
    Ok(sid(&start_workstation_with(c, json!({})).await?))
}

/// A workstation session with more `session_start` arguments; its start result.
async fn start_workstation_with(c: &Client, extra: serde_json::Value) -> Result<serde_json::Value> {
    let mut args = json!({ "image": "workstation" });
    if let (Some(a), serde_json::Value::Object(e)) = (args.as_object_mut(), extra) {
        a.extend(e);
    }
    let info = c
        .call_ok("session_start", args)
        .await
        .context("workstation session_start (`deskvm setup --image workstation` builds it)")?;
    assert_eq!(info["image"], "workstation", "{info}");
    assert_eq!(info["startup"], "ready_state", "{info}");
    Ok(info)
}

/// Waits until the focused window's title contains `part`; returns the title.
async fn wait_for_window(c: &Client, sid: &str, part: &str, limit: Duration) -> Result<String> {
    Ok(c.wait_for_title(sid, part, limit).await?.0)
}

/// Fraction of pixels that differ between two screenshots of one size.
fn changed(a: &[u8], b: &[u8]) -> Result<f64> {
    let a = image::load_from_memory(a)?.to_rgb8();
    let b = image::load_from_memory(b)?.to_rgb8();
    anyhow::ensure!(a.dimensions() == b.dimensions(), "sizes differ");
    let n = a.pixels().zip(b.pixels()).filter(|(x, y)| x != y).count();
    Ok(n as f64 / (a.width() * a.height()) as f64)
}

/// Waits for the screen to settle: a window that just got its title may still be building
/// its contents under TCG, and keys sent meanwhile can be lost by the application.
async fn settle(c: &Client, sid: &str) -> Result<()> {
    c.call_ok(
        "wait",
        json!({ "session_id": sid, "ms": 1000, "until_stable": true, "timeout_ms": 30000 }),
    )
    .await?;
    Ok(())
}

/// Waits until LibreOffice has been idle for a second (under 100 ms of CPU), for at most 90 s:
/// a window that has its title can go on building its contents for a minute under TCG, and
/// keys sent meanwhile can be lost. Still busy after that, it says what the guest was doing on
/// stderr and goes on: each step checks its own effect and is retried ([`keys_until`]), and
/// the saved file is what the test asserts.
async fn office_idle(c: &Client, sid: &str) -> Result<()> {
    let script = "p=$(pgrep -x soffice.bin | head -1); [ -n \"$p\" ] || exit 2; \
        t() { awk '{print $14 + $15}' /proc/$p/stat; }; \
        for i in $(seq 90); do a=$(t); sleep 1; b=$(t); printf '%s ' $((b - a)); \
        [ $((b - a)) -lt 10 ] && exit 0; done; exit 1";
    let out = c
        .call_ok(
            "exec",
            json!({ "session_id": sid, "command": script, "timeout_ms": 120000 }),
        )
        .await?;
    if out["exit_code"] != 0 {
        let top = guest(
            c,
            sid,
            "ps -eo pcpu,rss,comm --sort=-pcpu | head -8; uptime",
        )
        .await?;
        let title = active_window(c, sid).await.unwrap_or_default();
        let (shot, _) = c.screenshot(sid, json!({})).await?;
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("workstation-office-busy.png"), shot)?;
        eprintln!("LibreOffice still busy after 90 s: {out}\nwindow: {title}\n{top}");
    }
    Ok(())
}

/// Clicks `at` (if given) and sends `keys` until the focused window's title contains `want`,
/// three times at most: a key that a busy LibreOffice dropped is sent again, as a person would.
async fn keys_until(
    c: &Client,
    sid: &str,
    at: Option<(u32, u32)>,
    keys: &str,
    want: &str,
) -> Result<()> {
    for attempt in 1..=3 {
        office_idle(c, sid).await?;
        if let Some(p) = at {
            click(c, sid, p).await?;
        }
        key(c, sid, keys).await?;
        if c.wait_for_title(sid, want, Duration::from_secs(60))
            .await
            .is_ok()
        {
            return Ok(());
        }
        let title = active_window(c, sid).await.unwrap_or_default();
        eprintln!("attempt {attempt}: `{keys}` did not bring up {want:?}; window: {title}");
    }
    anyhow::bail!("`{keys}` never brought up a window titled {want:?}")
}

/// Cell A1 of a Calc window on the 1280x800 workstation desktop (maximized under the panel;
/// column A is at its narrowest after a CSV import).
const A1: (u32, u32) = (52, 221);

async fn click(c: &Client, sid: &str, (x, y): (u32, u32)) -> Result<()> {
    c.call_ok("click", json!({ "session_id": sid, "x": x, "y": y }))
        .await?;
    Ok(())
}

async fn key(c: &Client, sid: &str, keys: &str) -> Result<()> {
    c.call_ok("key", json!({ "session_id": sid, "keys": keys }))
        .await?;
    Ok(())
}

async fn type_text(c: &Client, sid: &str, text: &str) -> Result<()> {
    c.call_ok("type", json!({ "session_id": sid, "text": text }))
        .await?;
    Ok(())
}

/// Firefox on a page the test wrote; returns the screenshot with it open.
async fn firefox_page(c: &Client, sid: &str, empty: &[u8]) -> Result<Vec<u8>> {
    let write = format!("cat > /home/user/page.html <<'EOF'\n{PAGE}\nEOF");
    guest(c, sid, &write).await?;
    guest(
        c,
        sid,
        "setsid firefox-esr --new-window file:///home/user/page.html >/dev/null 2>&1 &",
    )
    .await?;
    let title = wait_for_window(c, sid, "deskvm test page", Duration::from_secs(180)).await?;
    assert!(title.contains("Firefox"), "{title}");
    // The same title read the way a person would check it: xprop on the active window.
    let xprop = active_window(c, sid).await?;
    assert!(xprop.contains("deskvm test page"), "{xprop}");
    wait_stable(c, sid).await?;
    let (shot, _) = c.screenshot(sid, json!({})).await?;
    let moved = changed(empty, &shot)?;
    assert!(
        moved > 0.05,
        "Firefox changed only {moved:.3} of the screen"
    );
    Ok(shot)
}

/// Calc opens the CSV; the copy goes into a new spreadsheet saved as .ods, by keys alone.
async fn calc_csv_to_ods(c: &Client, sid: &str) -> Result<()> {
    guest(
        c,
        sid,
        "printf 'fruit,count\\napple,3\\npear,5\\n' > /home/user/data.csv",
    )
    .await?;
    guest(
        c,
        sid,
        "setsid soffice --calc /home/user/data.csv >/dev/null 2>&1 &",
    )
    .await?;
    wait_for_window(c, sid, "Text Import", Duration::from_secs(240)).await?;
    keys_until(c, sid, None, "Return", "data.csv - LibreOffice Calc").await?;
    // Click into the sheet before typing, as a person would: a window that has just opened
    // does not always have the keyboard focus inside it yet. The cells in use, not the whole
    // sheet: copying a million rows' worth of clipboard formats keeps LibreOffice busy for
    // minutes under TCG.
    let copy = "ctrl+Home ctrl+shift+End ctrl+c ctrl+n";
    keys_until(c, sid, Some(A1), copy, "Untitled").await?;
    office_idle(c, sid).await?;
    click(c, sid, A1).await?;
    key(c, sid, "ctrl+v").await?;
    keys_until(c, sid, None, "ctrl+s", "Save").await?;
    office_idle(c, sid).await?;
    // GTK's file chooser takes a whole path in its name field.
    type_text(c, sid, "/home/user/data.ods\n").await?;
    read_guest_file(c, sid, "/home/user/data.ods", 100).await?;
    // Written once the save has finished: the zip's directory is last.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let content = guest(c, sid, "unzip -p /home/user/data.ods content.xml").await?;
    for cell in [
        "fruit",
        "apple",
        "pear",
        "office:value=\"3\"",
        "office:value=\"5\"",
    ] {
        assert!(
            content.contains(cell),
            "{cell} not in content.xml: {content}"
        );
    }
    Ok(())
}

/// CJK and emoji typed into Mousepad, saved with ctrl+s, read back byte-exact.
async fn editor_unicode(c: &Client, sid: &str) -> Result<()> {
    guest(c, sid, ": > /home/user/notes.txt").await?;
    guest(
        c,
        sid,
        "setsid mousepad /home/user/notes.txt >/dev/null 2>&1 &",
    )
    .await?;
    wait_for_window(c, sid, "notes.txt - Mousepad", Duration::from_secs(120)).await?;
    settle(c, sid).await?;
    let text = "deskvm 漢字かな 한국어 Ελληνικά кириллица 😀🎉";
    type_text(c, sid, text).await?;
    key(c, sid, "ctrl+s").await?;
    let mut saved = String::new();
    for _ in 0..40 {
        saved = guest(c, sid, "cat /home/user/notes.txt").await?;
        if !saved.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(saved, text, "the saved file differs from what was typed");
    Ok(())
}

async fn exec_runs_as_the_user_unless_root(c: &Client, sid: &str) -> Result<()> {
    let who = guest(
        c,
        sid,
        "id -un; echo $HOME; test -d ~/Desktop && echo desktop",
    )
    .await?;
    assert_eq!(who, "user\n/home/user\ndesktop\n");
    let out = c
        .call_ok(
            "exec",
            json!({ "session_id": sid, "command": "id -un", "root": true }),
        )
        .await?;
    assert_eq!(out["stdout"], "root\n", "{out}");
    // sudo with the conventional password, and the accessibility bus on the session bus.
    let sudo = guest(c, sid, "echo password | sudo -S -p '' id -un").await?;
    assert_eq!(sudo, "root\n");
    let a11y = guest(
        c,
        sid,
        "dbus-send --session --print-reply --dest=org.a11y.Bus /org/a11y/bus org.a11y.Bus.GetAddress",
    )
    .await?;
    assert!(a11y.contains("unix:"), "no accessibility bus: {a11y}");
    Ok(())
}

async fn workstation_on(backend: &str, fork: bool) -> Result<()> {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = server_with(&["--backend", backend]).await?;
    let c = &s.client;
    let sid = start_workstation(c).await?;
    exec_runs_as_the_user_unless_root(c, &sid).await?;
    let (empty, _) = c.screenshot(&sid, json!({})).await?;
    let with_firefox = firefox_page(c, &sid, &empty).await?;
    if fork {
        c.call_ok(
            "checkpoint",
            json!({ "session_id": sid, "name": "firefox-open" }),
        )
        .await?;
        let info = c
            .call_ok(
                "session_start",
                json!({ "from_checkpoint": "firefox-open" }),
            )
            .await?;
        let forked = common::sid(&info);
        let (first, _) = c.screenshot(&forked, json!({})).await?;
        let drift = changed(&with_firefox, &first)?;
        assert!(
            drift < 0.02,
            "the fork's first screenshot differs by {drift:.3}"
        );
        assert!(
            changed(&empty, &first)? > 0.05,
            "the fork shows the empty desktop"
        );
        let title = active_window(c, &forked).await?;
        assert!(title.contains("deskvm test page"), "{title}");
        c.call_ok("session_stop", json!({ "session_id": forked }))
            .await?;
    }
    // By process name: `pkill -f` would match the shell running it.
    guest(c, &sid, "pkill -x firefox-esr; true").await?;
    calc_csv_to_ods(c, &sid).await?;
    guest(c, &sid, "pkill -x soffice.bin; true").await?;
    editor_unicode(c, &sid).await?;
    c.call_ok("session_stop", json!({ "session_id": sid }))
        .await?;
    Ok(())
}

#[tokio::test]
async fn workstation_apps_on_the_local_backend() -> Result<()> {
    workstation_on("local", true).await
}

#[tokio::test]
async fn workstation_apps_on_the_docker_backend() -> Result<()> {
    workstation_on("docker", false).await
}

/// A service of this host, forwarded into a guest with no network, opened in Firefox.
#[tokio::test]
async fn firefox_opens_a_forwarded_host_service() -> Result<()> {
    let _one = ONE_AT_A_TIME.lock().await;
    let svc = net::HostService::start("Forwarded deskvm page")?;
    let port = svc.port;
    let s = server_with(&["--backend", "local", "--allow-forward", &port.to_string()]).await?;
    let c = &s.client;
    let info =
        start_workstation_with(c, json!({ "forward": [format!("127.0.0.1:{port}")] })).await?;
    let url = format!("http://host.deskvm.internal:{port}/");
    assert_eq!(
        info["network"]["forwards"][0]["guest"],
        format!("host.deskvm.internal:{port}"),
        "{info}"
    );
    let sid = sid(&info);
    guest(
        c,
        &sid,
        &format!("setsid firefox-esr --new-window {url} >/dev/null 2>&1 &"),
    )
    .await?;
    let limit = Duration::from_secs(180);
    let title = net::wait_for_xprop_title(c, &sid, "Forwarded deskvm page", limit).await?;
    assert!(title.contains("Firefox"), "{title}");
    assert!(svc.connections() >= 1, "the host service saw no connection");
    c.call_ok("session_stop", json!({ "session_id": sid }))
        .await?;
    Ok(())
}

/// Mixed-script text set on the clipboard is pasted into Mousepad and saved (the file, written
/// by the GUI, downloaded exact); copied back out of Mousepad it is what `clipboard_get` reads.
#[tokio::test]
async fn clipboard_round_trips_mixed_script_text() -> Result<()> {
    const TEXT: &str = "Grüße 你好 мир 🙂 ok";
    let _one = ONE_AT_A_TIME.lock().await;
    let s = server_with(&["--backend", "local"]).await?;
    let c = &s.client;
    let sid = start_workstation(c).await?;
    let set = c
        .call_ok("clipboard_set", json!({ "session_id": sid, "text": TEXT }))
        .await?;
    assert_eq!(set["chars"], TEXT.chars().count(), "{set}");
    let file = "/home/user/clip.txt";
    guest(c, &sid, &format!(": > {file}")).await?;
    guest(
        c,
        &sid,
        &format!("setsid mousepad {file} >/dev/null 2>&1 &"),
    )
    .await?;
    wait_for_window(c, &sid, "clip.txt - Mousepad", Duration::from_secs(120)).await?;
    settle(c, &sid).await?;
    key(c, &sid, "ctrl+v").await?;
    // GTK pastes asynchronously (it asks the clipboard's owner, xclip, for the text): a save
    // sent at once can write the empty buffer. The title's `*` says the text arrived.
    wait_for_window(c, &sid, "*~/clip.txt", Duration::from_secs(60)).await?;
    key(c, &sid, "ctrl+s").await?;
    let saved = net::download_written(c, &sid, file, Duration::from_secs(20)).await?;
    assert_eq!(saved.meta["text"], true, "{}", saved.meta);
    assert_eq!(saved.text.as_deref(), Some(TEXT), "{}", saved.meta);
    assert_eq!(
        saved.meta["sha256"],
        net::sha256_hex(TEXT.as_bytes()).as_str()
    );

    // Something else on the clipboard, then Mousepad's text copied over it.
    c.call_ok(
        "clipboard_set",
        json!({ "session_id": sid, "text": "placeholder" }),
    )
    .await?;
    let got = c
        .call_ok("clipboard_get", json!({ "session_id": sid }))
        .await?;
    assert_eq!(got["text"], "placeholder", "{got}");
    key(c, &sid, "ctrl+a").await?;
    key(c, &sid, "ctrl+c").await?;
    let mut got = serde_json::Value::Null;
    for _ in 0..20 {
        got = c
            .call_ok("clipboard_get", json!({ "session_id": sid }))
            .await?;
        if got["text"] == TEXT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(got["text"], TEXT, "what Mousepad copied: {got}");
    c.call_ok("session_stop", json!({ "session_id": sid }))
        .await?;
    Ok(())
}
