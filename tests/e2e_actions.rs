//! The whole action set on a real guest through the real binary: zoom against the same crop of
//! a screenshot, the cursor position, a selection made with mouse_down/move/up and read back
//! through the X selection, a key held long enough to auto-repeat, modifiers held during a
//! scroll; then recorded Anthropic and OpenAI action sequences replayed through `computer`
//! reaching the same end state as the typed tools. Both run beside two CPU hogs: pointer input
//! must hold under load (a drag was lost when another process used the CPU).

mod common;

use anyhow::{anyhow, Result};
use base64::Engine;
use common::*;
use deskvm::client::Client;
use rmcp::model::CallToolResult;
use serde_json::{json, Value};

fn image_of(r: &CallToolResult) -> Result<image::RgbImage> {
    let data = r
        .content
        .iter()
        .find_map(|c| c.as_image().map(|i| i.data.clone()))
        .ok_or_else(|| anyhow!("no image in {}", deskvm::client::text_of(r)))?;
    let png = base64::engine::general_purpose::STANDARD.decode(data)?;
    Ok(image::load_from_memory(&png)?.into_rgb8())
}

async fn call_img(c: &Client, tool: &str, args: Value) -> Result<image::RgbImage> {
    let r = c.call(tool, args).await?;
    anyhow::ensure!(
        r.is_error != Some(true),
        "{tool}: {}",
        deskvm::client::text_of(&r)
    );
    image_of(&r)
}

#[tokio::test]
async fn zoom_cursor_buttons_holds_and_modifiers_on_a_real_guest() -> Result<()> {
    let _hogs = cpu_hogs(2)?;
    let s = server().await?;
    let c = &s.client;
    let sid = start(c).await?;
    let full = call_img(c, "screenshot", json!({ "session_id": sid })).await?;
    assert_eq!(full.dimensions(), (1280, 800));

    // Zoom: the region at full resolution is the same pixels as that crop of a screenshot,
    // also when coordinates are in a half-size screenshot's space.
    let z = call_img(
        c,
        "zoom",
        json!({ "session_id": sid, "x": 40, "y": 40, "width": 300, "height": 60 }),
    )
    .await?;
    let crop = image::imageops::crop_imm(&full, 40, 40, 300, 60).to_image();
    assert_eq!(z.dimensions(), (300, 60));
    assert!(z == crop, "zoom must equal the crop of the full screenshot");
    let half = call_img(c, "screenshot", json!({ "session_id": sid, "scale": 0.5 })).await?;
    assert_eq!(half.dimensions(), (640, 400));
    let z = call_img(
        c,
        "zoom",
        json!({ "session_id": sid, "x": 20, "y": 20, "width": 150, "height": 30 }),
    )
    .await?;
    assert!(
        z == crop,
        "a zoom in half-size coordinates covers the same screen pixels"
    );
    let big = call_img(
        c,
        "zoom",
        json!({ "session_id": sid, "x": 20, "y": 20, "width": 150, "height": 30, "scale": 2 }),
    )
    .await?;
    assert_eq!(big.dimensions(), (600, 120));
    let (kind, msg) = tool_error(
        c,
        "zoom",
        json!({ "session_id": sid, "x": 600, "y": 0, "width": 100, "height": 10 }),
    )
    .await?;
    assert_eq!(kind, "out_of_range");
    assert!(msg.contains("0..=639"), "{msg}");

    // Cursor position, in the latest screenshot's space and in screen pixels.
    c.call_ok(
        "mouse_move",
        json!({ "session_id": sid, "x": 123, "y": 234 }),
    )
    .await?;
    let pos = c
        .call_ok("cursor_position", json!({ "session_id": sid }))
        .await?;
    assert_eq!(
        (pos["x"].as_f64(), pos["y"].as_f64()),
        (Some(123.0), Some(234.0)),
        "{pos}"
    );
    assert_eq!(
        (pos["screen_x"].as_u64(), pos["screen_y"].as_u64()),
        (Some(246), Some(468))
    );
    c.screenshot(&sid, json!({})).await?;
    let pos = c
        .call_ok("cursor_position", json!({ "session_id": sid }))
        .await?;
    assert_eq!(
        (pos["x"].as_f64(), pos["y"].as_f64()),
        (Some(246.0), Some(468.0)),
        "{pos}"
    );

    // A selection made by hand: button down at the start of a line, moved, released; then
    // pasted from the X selection (middle click) into a file.
    c.call_ok("click", json!({ "session_id": sid, "x": 400, "y": 300 }))
        .await?;
    c.call_ok(
        "type",
        json!({ "session_id": sid, "text": "clear; echo SELECT-ME-4711; echo > /tmp/shown\n" }),
    )
    .await?;
    // A quiet screen alone can come before the shell ran the line on a loaded host: the file
    // says it has printed, then the terminal is let draw it.
    read_guest_file(c, &sid, "/tmp/shown", 1).await?;
    wait_stable(c, &sid).await?;
    c.call_ok("mouse_down", json!({ "session_id": sid, "x": 52, "y": 79 }))
        .await?;
    for x in [150, 300, 600] {
        c.call_ok("mouse_move", json!({ "session_id": sid, "x": x, "y": 79 }))
            .await?;
    }
    let up = c.call_ok("mouse_up", json!({ "session_id": sid })).await?;
    assert!(
        up["message"]
            .as_str()
            .unwrap_or_default()
            .contains("(600, 79)"),
        "{up}"
    );
    c.call_ok(
        "type",
        json!({ "session_id": sid, "text": "cat > /tmp/sel\n" }),
    )
    .await?;
    wait_stable(c, &sid).await?;
    c.call_ok(
        "click",
        json!({ "session_id": sid, "x": 400, "y": 300, "button": "middle" }),
    )
    .await?;
    c.call_ok("key", json!({ "session_id": sid, "keys": "Return ctrl+d" }))
        .await?;
    let sel = read_guest_file(c, &sid, "/tmp/sel", 5).await?;
    // Dragged past the end of the line, the selection holds the line's end too: the pasted
    // text is the line either way.
    assert_eq!(
        sel.trim_end(),
        "SELECT-ME-4711",
        "the selection made with mouse_down/up"
    );

    // A key held: with auto-repeat on, holding "a" for 1.5 s repeats it; a tap types one.
    guest(c, &sid, "xset r rate 300 20").await?;
    c.call_ok(
        "type",
        json!({ "session_id": sid, "text": "cat > /tmp/hold\n" }),
    )
    .await?;
    c.call_ok("key", json!({ "session_id": sid, "keys": "b" }))
        .await?;
    c.call_ok(
        "key",
        json!({ "session_id": sid, "keys": "a", "hold_ms": 1500 }),
    )
    .await?;
    c.call_ok("key", json!({ "session_id": sid, "keys": "Return ctrl+d" }))
        .await?;
    guest(c, &sid, "xset r off").await?;
    let held = read_guest_file(c, &sid, "/tmp/hold", 3).await?;
    let a = held.matches('a').count();
    assert!(
        held.starts_with("ba") && a >= 5,
        "a held 1.5 s must repeat: {held:?}"
    );

    // Modifiers held during a scroll are released afterwards: typing is plain again.
    let r = c
        .call_ok(
            "scroll",
            json!({ "session_id": sid, "x": 400, "y": 300, "dy": 2, "modifiers": ["ctrl", "shift"] }),
        )
        .await?;
    assert!(r["ok"].as_bool().unwrap_or(false), "{r}");
    c.call_ok(
        "type",
        json!({ "session_id": sid, "text": "echo plain-after-scroll > /tmp/after\n" }),
    )
    .await?;
    let after = read_guest_file(c, &sid, "/tmp/after", 5).await?;
    assert_eq!(after, "plain-after-scroll\n");

    // Refused before anything runs, and recorded.
    let (kind, _) = tool_error(
        c,
        "drag",
        json!({ "session_id": sid, "from": {"x": 1, "y": 1}, "path": [{"x": 1, "y": 1}, {"x": 2, "y": 2}] }),
    )
    .await?;
    assert_eq!(kind, "invalid_params");
    let (kind, _) = tool_error(
        c,
        "key",
        json!({ "session_id": sid, "keys": "a", "hold_ms": 70000 }),
    )
    .await?;
    assert_eq!(kind, "out_of_range");
    let ev = events(&s.data.join("reviews").join(&sid))?;
    let tools: Vec<&str> = ev.iter().filter_map(|e| e["tool"].as_str()).collect();
    for t in [
        "zoom",
        "cursor_position",
        "mouse_down",
        "mouse_up",
        "scroll",
        "drag",
    ] {
        assert!(tools.contains(&t), "{t} must be in the ledger: {tools:?}");
    }
    Ok(())
}

/// The same task through the typed tools, Anthropic's actions and OpenAI's, each in its own
/// session: the text typed and the window dragged 100 px right and down.
#[tokio::test]
async fn recorded_anthropic_and_openai_actions_reach_the_native_end_state() -> Result<()> {
    let _hogs = cpu_hogs(2)?;
    let s = server().await?;
    let c = &s.client;
    const END_STATE: &str = "cat /tmp/dropin; xwininfo -name terminal | grep Absolute";

    let native = start(c).await?;
    let before = guest(c, &native, "xwininfo -name terminal | grep Absolute").await?;
    let id = json!(native);
    c.screenshot(&native, json!({})).await?;
    c.call_ok("click", json!({ "session_id": id, "x": 400, "y": 300 }))
        .await?;
    c.call_ok(
        "type",
        json!({ "session_id": id, "text": "echo drop-in-Müller-東京 > /tmp/dropin" }),
    )
    .await?;
    c.call_ok("key", json!({ "session_id": id, "keys": "Return" }))
        .await?;
    c.call_ok(
        "drag",
        json!({ "session_id": id, "from": {"x": 300, "y": 57}, "to": {"x": 400, "y": 157} }),
    )
    .await?;
    wait_stable(c, &native).await?;
    let want = read_guest_file(c, &native, "/tmp/dropin", 5).await?;
    assert_eq!(want, "drop-in-Müller-東京\n");
    let want = guest(c, &native, END_STATE).await?;
    let xy = |s: &str| -> Vec<i64> {
        s.lines()
            .filter_map(|l| l.rsplit(':').next()?.trim().parse().ok())
            .collect()
    };
    let (b, w) = (xy(&before), xy(&want));
    assert_eq!(w.len(), 2, "{want}");
    if (w[0] - b[0], w[1] - b[1]) != (100, 100) {
        let (png, _) = c.screenshot(&native, json!({})).await?;
        std::fs::write(browser::artifact_dir().join("drag-failure.png"), png)?;
    }
    assert_eq!(
        (w[0] - b[0], w[1] - b[1]),
        (100, 100),
        "dragged by its title bar: {before} -> {want}"
    );

    for file in ["anthropic.json", "openai.json"] {
        let path = format!(
            "{}/tests/fixtures/computer/{file}",
            env!("CARGO_MANIFEST_DIR")
        );
        let fixture: Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
        let sid = start(c).await?;
        for action in fixture["actions"].as_array().unwrap() {
            let r = c
                .call("computer", json!({ "session_id": sid, "action": action }))
                .await?;
            let text = deskvm::client::text_of(&r);
            assert!(r.is_error != Some(true), "{file} {action}: {text}");
            let name = action["action"]
                .as_str()
                .or(action["type"].as_str())
                .unwrap();
            if name == "cursor_position" {
                assert_eq!(text, "X=640,Y=700", "{file}");
            } else {
                // Every other action answers with a picture: the screen after it (a zoom:
                // the region).
                let img = image_of(&r)?;
                let size = if name == "zoom" {
                    (640, 400)
                } else {
                    (1280, 800)
                };
                assert_eq!(img.dimensions(), size, "{file} {action}");
            }
        }
        wait_stable(c, &sid).await?;
        read_guest_file(c, &sid, "/tmp/dropin", 5).await?;
        let got = guest(c, &sid, END_STATE).await?;
        assert_eq!(got, want, "{file} must reach the native end state");
        let ev = events(&s.data.join("reviews").join(&sid))?;
        assert!(
            ev.iter().any(|e| e["tool"] == "drag"),
            "{file}: the drag is recorded as the session action it ran"
        );
    }

    // An unknown action names the supported ones, and is recorded.
    let r = c
        .call(
            "computer",
            json!({ "session_id": native, "action": {"action": "right_click_drag"} }),
        )
        .await?;
    assert_eq!(r.is_error, Some(true));
    let e = r.structured_content.unwrap_or_default();
    assert_eq!(e["error"], "unknown_action", "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap_or_default()
            .contains("left_click_drag"),
        "{e}"
    );
    let ev = events(&s.data.join("reviews").join(&native))?;
    assert!(
        ev.iter().any(|e| e["tool"] == "computer"),
        "the refused call is recorded"
    );
    Ok(())
}
