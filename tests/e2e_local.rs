//! End to end through the real binary, a real rmcp client over stdio, and a real QEMU guest
//! (local backend, TCG on these machines).

mod common;

use std::time::Duration;

use anyhow::Result;
use common::*;
use serde_json::json;

#[tokio::test]
async fn lists_the_tools_and_prompts() -> Result<()> {
    let s = server().await?;
    let mut tools = s.client.tool_names().await?;
    tools.sort();
    for t in [
        "click",
        "computer",
        "cursor_position",
        "drag",
        "exec",
        "key",
        "mouse_down",
        "mouse_move",
        "mouse_up",
        "zoom",
        "screenshot",
        "scroll",
        "session_list",
        "session_start",
        "session_stop",
        "type",
        "wait",
        "upload",
        "download",
        "clipboard_set",
        "clipboard_get",
    ] {
        assert!(
            tools.iter().any(|n| n == t),
            "tool {t} missing from {tools:?}"
        );
    }
    // The file size limit is in the schema the model reads.
    let upload = s.client.tool_schema("upload").await?;
    let content = upload["properties"]["content"]["description"]
        .as_str()
        .unwrap_or_default();
    assert!(content.contains("10 MiB"), "{upload}");
    assert_eq!(
        s.client.prompt_names().await?,
        vec!["use-desktop".to_string()]
    );
    s.client.close().await
}

/// The first click of a session must land: a decoy window takes the focus, the first click goes
/// to the terminal, and only then does typing reach the terminal's `cat`.
#[tokio::test]
async fn first_click_lands_and_typed_text_reads_back_exactly() -> Result<()> {
    let s = server().await?;
    let c = &s.client;
    let sid = start(c).await?;
    first_click_and_typing(c, &sid).await?;
    c.call_ok("session_stop", json!({ "session_id": sid }))
        .await?;
    s.client.close().await
}

#[tokio::test]
async fn bad_input_gets_clear_errors_and_the_session_survives() -> Result<()> {
    let s = server().await?;
    let c = &s.client;
    let sid = start(c).await?;
    c.screenshot(&sid, json!({})).await?;

    let (kind, msg) =
        tool_error(c, "click", json!({ "session_id": sid, "x": 1280, "y": 10 })).await?;
    assert_eq!(kind, "out_of_range");
    assert!(msg.contains("0..=1279") && msg.contains("0..=799"), "{msg}");

    let (kind, msg) = tool_error(
        c,
        "key",
        json!({ "session_id": sid, "keys": "ctrl+retrun" }),
    )
    .await?;
    assert_eq!(kind, "unknown_key");
    assert!(msg.contains("return"), "should suggest Return: {msg}");

    let (kind, msg) =
        tool_error(c, "click", json!({ "session_id": "nope", "x": 1, "y": 1 })).await?;
    assert_eq!(kind, "unknown_session");
    assert!(msg.contains(&sid), "should list the running session: {msg}");

    let (kind, msg) = tool_error(
        c,
        "type",
        json!({ "session_id": sid, "text": "x".repeat(5000) }),
    )
    .await?;
    assert_eq!(kind, "text_too_long");
    assert!(msg.contains("4096"), "{msg}");

    let (kind, msg) = tool_error(
        c,
        "type",
        json!({ "session_id": sid, "text": "bell \u{7} esc \u{1b}" }),
    )
    .await?;
    assert_eq!(kind, "invalid_input");
    assert!(msg.contains("U+0007") && msg.contains("U+001B"), "{msg}");

    let (kind, _) = tool_error(
        c,
        "click",
        json!({ "session_id": sid, "x": 5, "y": 5, "count": 7 }),
    )
    .await?;
    assert_eq!(kind, "out_of_range");
    let (kind, _) = tool_error(c, "session_start", json!({ "width": 100 })).await?;
    assert_eq!(kind, "out_of_range");
    // Malformed arguments are refused by the protocol layer, naming the field.
    let err = c
        .call("click", json!({ "session_id": sid, "x": "left" }))
        .await;
    assert!(
        err.is_err() || err.as_ref().unwrap().is_error == Some(true),
        "malformed args must fail"
    );

    // Coordinates follow the latest screenshot's scale: half size, so 639 is the last column.
    let (png, meta) = c.screenshot(&sid, json!({ "scale": 0.5 })).await?;
    assert_eq!(image::load_from_memory(&png)?.width(), 640);
    assert_eq!(meta["scale"], 0.5);
    let (kind, msg) =
        tool_error(c, "click", json!({ "session_id": sid, "x": 700, "y": 10 })).await?;
    assert_eq!(kind, "out_of_range");
    assert!(msg.contains("0..=639"), "{msg}");
    c.call_ok(
        "mouse_move",
        json!({ "session_id": sid, "x": 639, "y": 399 }),
    )
    .await?;

    // After all of that the session still answers.
    let (png, _) = c.screenshot(&sid, json!({})).await?;
    assert_eq!(image::load_from_memory(&png)?.width(), 1280);
    c.call_ok("session_stop", json!({ "session_id": sid }))
        .await?;
    s.client.close().await
}

#[tokio::test]
async fn a_dead_vm_fails_its_session_and_stop_cleans_up() -> Result<()> {
    let s = server().await?;
    let c = &s.client;
    let sid = start(c).await?;
    let dir = s.runtime.join("s").join(&sid);
    assert!(
        dir.join("qmp.sock").exists(),
        "QMP socket lives in the session runtime dir"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&dir)?.permissions().mode() & 0o777, 0o700);

    // A second session at another screen size (set with xrandr after resuming the ready state).
    let info = c
        .call_ok("session_start", json!({ "width": 1024, "height": 768 }))
        .await?;
    assert_eq!(info["startup"], "ready_state");
    let other = common::sid(&info);
    let (png, _) = c.screenshot(&other, json!({})).await?;
    let img = image::load_from_memory(&png)?;
    assert_eq!((img.width(), img.height()), (1024, 768));
    let killed = std::process::Command::new("pkill")
        .args(["-KILL", "-f", &format!("deskvm-{sid} ")])
        .status()?;
    assert!(
        killed.success(),
        "the session's qemu should have been found"
    );
    // Poll: the session fails as soon as the backend sees QEMU gone.
    let t = std::time::Instant::now();
    let failed = loop {
        let r = c.call("screenshot", json!({ "session_id": sid })).await?;
        if r.is_error == Some(true) || t.elapsed() > Duration::from_secs(10) {
            break r.structured_content.unwrap_or_default();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(failed["error"], "session_failed", "{failed}");
    let list = c.call_ok("session_list", json!({})).await?;
    assert!(list.to_string().contains("failed"), "{list}");
    // The other session is unaffected.
    assert_eq!(
        image::load_from_memory(&c.screenshot(&other, json!({})).await?.0)?.width(),
        1024
    );

    c.call_ok("session_stop", json!({ "session_id": sid }))
        .await?;
    assert!(!dir.exists(), "stop removes the runtime dir");
    // The review tells when and why the VM died, and that the session ended failed.
    let review = s.data.join("reviews").join(&sid);
    let died = events(&review)?
        .into_iter()
        .find(|e| e["kind"] == "session_failed")
        .expect("session_failed is recorded when the VM dies");
    assert!(
        !died["reason"].as_str().unwrap_or_default().is_empty(),
        "{died}"
    );
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(review.join("session.json"))?)?;
    assert_eq!(meta["state"], "failed", "{meta}");
    c.call_ok("session_stop", json!({ "session_id": other }))
        .await?;
    s.client.close().await
}

/// Rapid clicks must all land: after a burst of clicks, and right after a click on the desktop
/// background, one click on the terminal still focuses it.
#[tokio::test]
async fn rapid_clicks_are_not_lost() -> Result<()> {
    let s = server().await?;
    let c = &s.client;
    let sid = start(c).await?;
    open_decoy(c, &sid).await?;
    // Clicks inside the decoy keep the focus there.
    for i in 0..30u32 {
        c.call_ok(
            "click",
            json!({ "session_id": sid, "x": 900 + i, "y": 640 }),
        )
        .await?;
    }
    // Straight on, with nothing in between to give the guest time to drain its input queue.
    c.call_ok("click", json!({ "session_id": sid, "x": 300, "y": 250 }))
        .await?;
    c.call_ok(
        "type",
        json!({ "session_id": sid, "text": "echo after-burst > /tmp/burst.txt\n" }),
    )
    .await?;
    assert_eq!(
        read_guest_file(c, &sid, "/tmp/burst.txt", 1).await?,
        "after-burst\n"
    );

    // A click on the desktop background (which unfocuses everything) and straight on a click on
    // the terminal: the terminal must end up focused, every time.
    for i in 0..3 {
        c.call_ok("click", json!({ "session_id": sid, "x": 1150, "y": 300 }))
            .await?;
        c.call_ok("click", json!({ "session_id": sid, "x": 300, "y": 250 }))
            .await?;
        c.call_ok(
            "type",
            json!({ "session_id": sid, "text": format!("echo round-{i} >> /tmp/rounds.txt\n") }),
        )
        .await?;
    }
    assert_eq!(
        read_guest_file(c, &sid, "/tmp/rounds.txt", 24).await?,
        "round-0\nround-1\nround-2\n"
    );
    c.call_ok("session_stop", json!({ "session_id": sid }))
        .await?;
    s.client.close().await
}
