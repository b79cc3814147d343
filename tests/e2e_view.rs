//! The live view end to end: the real server over stdio with its loopback view listener, a real
//! guest, and Debian's Chromium (headless, driven over DevTools) as the person's browser.

mod common;

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use common::view::{canvas_matches_screenshot, link, status, url, wait_viewers};
use common::*;
use deskvm_devtools::cdp::Browser;
use deskvm_devtools::probe;
use serde_json::json;

/// Screenshots that differ in more than a handful of pixels (the pointer alone moves dozens).
async fn screen_pixels(c: &deskvm::client::Client, sid: &str) -> Result<image::RgbaImage> {
    let (png, _) = c.screenshot(sid, json!({})).await?;
    Ok(image::load_from_memory(&png)?.to_rgba8())
}

fn changed(a: &image::RgbaImage, b: &image::RgbaImage) -> usize {
    a.pixels().zip(b.pixels()).filter(|(p, q)| p != q).count()
}

#[tokio::test]
async fn a_person_watches_then_takes_over_in_a_real_browser() -> Result<()> {
    let s = server().await?;
    let c = &s.client;
    let sid = start(c).await?;
    wait_stable(c, &sid).await?;

    // Bad input is refused by name before anything is made.
    let (kind, msg) = tool_error(
        c,
        "session_view",
        json!({ "session_id": sid, "expires_in_s": 1 }),
    )
    .await?;
    assert_eq!(kind, "out_of_range", "{msg}");
    assert!(msg.contains("expires_in_s") && msg.contains("10"), "{msg}");
    let (kind, _) = tool_error(c, "session_view", json!({ "session_id": "nope" })).await?;
    assert_eq!(kind, "unknown_session");

    let watch = link(c, &sid, false).await?;
    let watch_url = url(&watch);
    assert!(
        watch_url.starts_with("http://127.0.0.1:"),
        "a stdio server serves views on loopback: {watch}"
    );
    assert!(watch["expires_at"].is_string() && watch["expires_in_s"] == 3600);

    let browser = Browser::launch(1400, 1000).await?;
    let watcher = browser.open(&watch_url).await?;
    canvas_matches_screenshot(c, &sid, &watcher).await?;

    // View only: the person's click and keys reach nothing, even from a page told to send them
    // (deskvm drops them; noVNC's own view-only switch is only the browser's manners).
    watcher
        .eval("window.deskvmView.rfb.viewOnly = false")
        .await?;
    let before = screen_pixels(c, &sid).await?;
    let (px, py) = probe::page_point(&watcher, 300, 250).await?;
    watcher.click(px, py).await?;
    watcher.type_text("xyz\n").await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = screen_pixels(c, &sid).await?;
    assert!(
        changed(&before, &after) < 10,
        "a view-only click changed {} pixels",
        changed(&before, &after)
    );

    // Control: a second viewer at once; the person clicks into the terminal and types.
    let take = link(c, &sid, true).await?;
    assert_ne!(url(&take), watch_url, "every call makes its own link");
    let person = browser.open(&url(&take)).await?;
    probe::wait_live(&person, Duration::from_secs(60)).await?;
    let third = link(c, &sid, false).await?;
    assert_eq!(third["viewers"], 2, "two viewers are open: {third}");
    let list = c.call_ok("session_list", json!({})).await?;
    assert_eq!(list["sessions"][0]["viewers"], 2, "{list}");
    let (px, py) = probe::page_point(&person, 300, 250).await?;
    person.click(px, py).await?;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    person
        .type_text("echo person-typed-42 > /tmp/person.txt\n")
        .await?;
    let typed = read_guest_file(c, &sid, "/tmp/person.txt", 16).await?;
    assert_eq!(
        typed, "person-typed-42\n",
        "the person's typing reaches the terminal"
    );
    // The watcher saw it happen: its canvas still matches the screen.
    canvas_matches_screenshot(c, &sid, &watcher).await?;

    // The agent carries on after the person.
    c.call_ok("click", json!({ "session_id": sid, "x": 300, "y": 250 }))
        .await?;
    c.call_ok(
        "type",
        json!({ "session_id": sid, "text": "echo agent-after > /tmp/agent.txt\n" }),
    )
    .await?;
    assert_eq!(
        read_guest_file(c, &sid, "/tmp/agent.txt", 12).await?,
        "agent-after\n"
    );

    // A wrong token is refused; the right one opens.
    let mut wrong = url(&take);
    let last = wrong.pop().unwrap();
    wrong.push(if last == 'A' { 'B' } else { 'A' });
    assert_eq!(status(&wrong).await?, 403);
    assert_eq!(status(&format!("{}/ws", wrong)).await?, 403);
    assert_eq!(status(&url(&take)).await?, 200);

    // On record: the person's input as summarised human_input, the links without their tokens.
    let ev = events(&s.data.join("reviews").join(&sid))?;
    seqs_are_gapless(&ev);
    let human: Vec<_> = ev.iter().filter(|e| e["kind"] == "human_input").collect();
    assert!(!human.is_empty(), "a person's input is on record");
    let keys: u64 = human.iter().map(|e| e["keys"].as_u64().unwrap()).sum();
    assert!(keys >= 38, "keys counted: {keys}");
    let clicks: Vec<_> = human
        .iter()
        .flat_map(|e| e["clicks"].as_array().unwrap().clone())
        .collect();
    assert!(
        clicks
            .iter()
            .any(|k| (k["x"].as_i64().unwrap() - 300).abs() <= 3
                && (k["y"].as_i64().unwrap() - 250).abs() <= 3),
        "the click in the terminal is on record: {clicks:?}"
    );
    assert!(
        human.iter().all(|e| e["viewers"] != json!([1])),
        "the view-only viewer's input is not: {human:?}"
    );
    let first_human = human[0]["seq"].as_u64().unwrap();
    let agent_click = ev.iter().rfind(|e| e["tool"] == "click").unwrap()["seq"]
        .as_u64()
        .unwrap();
    assert!(
        first_human < agent_click,
        "the person's input is before the agent's next call"
    );
    let text = std::fs::read_to_string(s.data.join("reviews").join(&sid).join("timeline.jsonl"))?;
    let token = url(&take).rsplit('/').next().unwrap().to_string();
    assert!(!text.contains(&token), "view tokens stay out of the review");
    assert!(
        human.iter().all(|e| !e.to_string().contains("person")),
        "which keys a person pressed stays out of the review: {human:?}"
    );

    // After session_stop every link is dead and the open pages say so.
    c.call_ok("session_stop", json!({ "session_id": sid }))
        .await?;
    assert_eq!(status(&watch_url).await?, 403);
    assert_eq!(status(&url(&take)).await?, 403);
    watcher
        .wait_for("window.deskvmView.ended", Duration::from_secs(20))
        .await?;
    s.client.close().await
}

#[tokio::test]
async fn the_view_is_offered_as_an_mcp_app_to_clients_that_render_one() -> Result<()> {
    use rmcp::model::{ClientCapabilities, ExtensionCapabilities};
    let (dirs, _guard) = temp_dirs(&["vt", "vd"])?;
    let mut ext = ExtensionCapabilities::new();
    ext.insert(
        "io.modelcontextprotocol/ui".into(),
        json!({ "mimeTypes": ["text/html;profile=mcp-app"] })
            .as_object()
            .unwrap()
            .clone(),
    );
    let caps = ClientCapabilities::builder()
        .enable_extensions_with(ext)
        .build();
    let env = Env::of(&dirs[0], &dirs[1]);
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_deskvm"));
    let apps =
        deskvm::client::Client::spawn_as(bin, &["--backend", "local"], &env.pairs(), caps).await?;
    let tools = apps.tools().await?;
    let view = tools.iter().find(|t| t.name == "session_view").unwrap();
    let meta = serde_json::to_value(&view.meta)?;
    assert_eq!(
        meta["ui"]["resourceUri"], "ui://deskvm/session-view",
        "{meta}"
    );
    let contents = apps.read_resource("ui://deskvm/session-view").await?;
    let c = serde_json::to_value(&contents[0])?;
    assert_eq!(c["mimeType"], "text/html;profile=mcp-app");
    assert!(c["text"]
        .as_str()
        .unwrap()
        .contains("ui/notifications/tool-result"));
    let frames = c["_meta"]["ui"]["csp"]["frameDomains"][0].as_str().unwrap();
    assert!(frames.starts_with("http://127.0.0.1:"), "{c}");

    // In a browser, as a host renders it: the app gets session_view's result over postMessage
    // and frames the live view, which connects.
    let sid = start(&apps).await?;
    let result = apps
        .call("session_view", json!({ "session_id": sid }))
        .await?;
    let host = dirs[0].join("host.html");
    let page = format!(
        r#"<!doctype html><iframe id="app" sandbox="allow-scripts allow-same-origin" style="width:1300px;height:700px"></iframe>
<script>
const app = document.getElementById('app');
const reply = (m) => app.contentWindow.postMessage(Object.assign({{ jsonrpc: '2.0' }}, m), '*');
window.addEventListener('message', (ev) => {{
  const m = ev.data;
  if (m.method === 'ui/initialize') reply({{ id: m.id, result: {{ protocolVersion: '2026-01-26', hostInfo: {{ name: 'test-host', version: '1' }}, hostCapabilities: {{}}, hostContext: {{}} }} }});
  if (m.method === 'ui/notifications/initialized') reply({{ method: 'ui/notifications/tool-result', params: {result} }});
  if (m.method === 'ui/notifications/size-changed') window.sized = true;
}});
app.srcdoc = {html};
</script>"#,
        result = serde_json::to_string(&result)?,
        // `</script>` in the string would end the host's script.
        html = serde_json::to_string(c["text"].as_str().unwrap())?.replace("</", "<\\/"),
    );
    std::fs::write(&host, &page)?;
    let browser = Browser::launch(1400, 1000).await?;
    let tab = browser.open(&format!("file://{}", host.display())).await?;
    if let Err(e) = tab.wait_for("window.sized", Duration::from_secs(30)).await {
        let inner = tab
            .eval("[document.getElementById('app').srcdoc.length, String(document.getElementById('app').contentDocument && document.getElementById('app').contentDocument.documentElement.outerHTML).slice(0, 300), document.scripts.length]")
            .await;
        panic!("{e}: the app shows {inner:?}");
    }
    wait_viewers(&apps, &sid, 1, Duration::from_secs(20))
        .await
        .context("the app's frame opened the live view")?;
    drop(browser);
    apps.close().await?;

    // A client that does not render apps gets the plain tool.
    let plain = server().await?;
    let tools = plain.client.tools().await?;
    let view = tools.iter().find(|t| t.name == "session_view").unwrap();
    assert!(
        view.meta.is_none(),
        "no app for a client without the extension"
    );
    plain.client.close().await
}

/// The Docker backend's view reaches QEMU's VNC socket with no port published.
#[tokio::test]
async fn the_docker_backends_view_works_with_no_port_published() -> Result<()> {
    let s = server_with(&["--backend", "docker"]).await?;
    let c = &s.client;
    let info = c.call_ok("session_start", json!({})).await?;
    assert_eq!(info["backend"], "docker", "{info}");
    let sid = sid(&info);
    let out = Command::new("docker")
        .args([
            "inspect",
            "--format",
            "{{json .HostConfig.PortBindings}} {{json .NetworkSettings.Ports}}",
            &format!("deskvm-{sid}"),
        ])
        .output()?;
    let inspected = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        inspected == "{} {}"
            || inspected == "null {}"
            || inspected == "{} null"
            || inspected == "null null",
        "no port is published: {inspected}"
    );
    let v = link(c, &sid, false).await?;
    let browser = Browser::launch(1400, 1000).await?;
    let page = browser.open(&url(&v)).await?;
    canvas_matches_screenshot(c, &sid, &page).await?;
    c.call_ok("session_stop", json!({ "session_id": sid }))
        .await?;
    assert_eq!(status(&url(&v)).await?, 403);
    s.client.close().await
}

/// A raw WebSocket to a view link, as any program could open one.
async fn socket(
    url: &str,
    origin: Option<&str>,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    tokio_tungstenite::tungstenite::Error,
> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("{}/ws", url.replacen("http://", "ws://", 1))
        .into_client_request()
        .unwrap();
    if let Some(o) = origin {
        req.headers_mut().insert("origin", o.parse().unwrap());
    }
    tokio_tungstenite::connect_async(req)
        .await
        .map(|(ws, _)| ws)
}

fn refused_with(r: Result<impl Sized, tokio_tungstenite::tungstenite::Error>) -> u16 {
    match r {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("refused otherwise: {e}"),
        Ok(_) => 101,
    }
}

/// Links are limited: other origins, a ninth viewer, an expired link and a dead VM are refused,
/// and an open view is cut off when its link expires.
#[tokio::test]
async fn view_links_are_scoped_limited_and_expire() -> Result<()> {
    use futures::StreamExt;
    let s = server().await?;
    let c = &s.client;
    let sid = start(c).await?;
    let v = link(c, &sid, false).await?;
    let u = url(&v);

    assert_eq!(
        refused_with(socket(&u, Some("http://evil.example")).await),
        403
    );
    let mut open = Vec::new();
    for _ in 0..8 {
        open.push(socket(&u, None).await?);
    }
    let now = link(c, &sid, false).await?;
    assert_eq!(now["viewers"], 8, "{now}");
    assert_eq!(refused_with(socket(&u, None).await), 429, "a ninth viewer");
    // Seats free when the server sees each socket close, which is not at once: wait for it
    // rather than race the next connection against eight closing handshakes.
    for mut ws in open {
        ws.close(None).await?;
    }
    wait_viewers(c, &sid, 0, Duration::from_secs(15))
        .await
        .context("closed viewers still hold seats")?;

    // A link that expires while its view is open: the view is closed, the link refused.
    let short = c
        .call_ok(
            "session_view",
            json!({ "session_id": sid, "expires_in_s": 10 }),
        )
        .await?;
    let mut ws = socket(&url(&short), None).await?;
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(m) = ws.next().await {
            if let Ok(tokio_tungstenite::tungstenite::Message::Close(Some(f))) = m {
                return Some(u16::from(f.code));
            }
        }
        None
    })
    .await?;
    assert_eq!(closed, Some(4002), "closed as expired");
    assert_eq!(status(&url(&short)).await?, 403);
    assert_eq!(status(&u).await?, 200, "the longer link still opens");

    // A VM that dies takes its links with it.
    let pids = Command::new("pgrep")
        .args(["-f", &format!("deskvm-{sid}")])
        .output()?;
    let pid: i32 = String::from_utf8_lossy(&pids.stdout)
        .lines()
        .next()
        .expect("the session's QEMU")
        .trim()
        .parse()?;
    kill_9(pid);
    let mut code = 0;
    for _ in 0..50 {
        code = status(&u).await?;
        if code == 403 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(code, 403, "a failed session's link is dead");
    s.client.close().await
}
