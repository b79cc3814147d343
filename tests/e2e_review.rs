//! The review ledger end to end: a real guest driven through the real binary by rmcp's client,
//! the bundle exported, moved, read back over MCP and opened in headless Chromium.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use common::*;
use deskvm::session::boot::TERMINAL_POINT;
use serde_json::{json, Value};

const SECRET: &str = "Xq7-s3cret-Pa55word-91";

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn every_call_is_recorded_and_the_bundle_moves_and_opens_in_a_browser() -> Result<()> {
    let s = server().await?;
    let c = &s.client;
    let sid = start(c).await?;
    c.screenshot(&sid, json!({})).await?;
    let (x, y) = TERMINAL_POINT;
    c.call_ok("click", json!({ "session_id": sid, "x": x, "y": y }))
        .await?;
    // A secret typed where the shell does not echo it (read -s), then plain text.
    c.call_ok(
        "type",
        json!({ "session_id": sid, "text": "read -s pw; echo ${#pw} > /tmp/pwlen\n" }),
    )
    .await?;
    // Keys typed before `read -s` has turned echo off would be echoed or lost: wait until the
    // shell's terminal is in that mode.
    let mut mode = String::new();
    for _ in 0..40 {
        mode = guest(
            c,
            &sid,
            "stty -a -F $(readlink /proc/$(pgrep -n -x bash)/fd/0)",
        )
        .await?;
        let flags: Vec<&str> = mode.split_whitespace().collect();
        if flags.contains(&"-echo") && flags.contains(&"icanon") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let flags: Vec<&str> = mode.split_whitespace().collect();
    assert!(
        flags.contains(&"-echo") && flags.contains(&"icanon"),
        "read -s never turned echo off: {mode}"
    );
    c.call_ok(
        "type",
        json!({ "session_id": sid, "text": format!("{SECRET}\n"), "secret": true }),
    )
    .await?;
    let pwlen = read_guest_file(c, &sid, "/tmp/pwlen", 1).await?;
    if pwlen.trim() != SECRET.len().to_string() {
        // Keep what the terminal showed: typing that lost keys is told apart from a wrong length.
        let (png, _) = c.screenshot(&sid, json!({})).await?;
        std::fs::write(
            browser::artifact_dir().join("secret-typing-failure.png"),
            png,
        )?;
        let ps = guest(c, &sid, "ps -eo pid,stat,args | grep -v ']$' | tail -8").await?;
        panic!("the secret must still be typed: /tmp/pwlen = {pwlen:?}; guest processes:\n{ps}");
    }
    c.call_ok(
        "type",
        json!({ "session_id": sid, "text": "echo visible-text" }),
    )
    .await?;
    c.call_ok("key", json!({ "session_id": sid, "keys": "Return" }))
        .await?;
    c.call_ok(
        "drag",
        json!({ "session_id": sid, "from": {"x": 1000, "y": 600}, "to": {"x": 1100, "y": 650} }),
    )
    .await?;
    // Refused calls: off screen, bad count, malformed arguments, an unknown session.
    let (kind, _) =
        tool_error(c, "click", json!({ "session_id": sid, "x": 5000, "y": 10 })).await?;
    assert_eq!(kind, "out_of_range");
    let (kind, _) = tool_error(
        c,
        "click",
        json!({ "session_id": sid, "x": 5, "y": 5, "count": 7 }),
    )
    .await?;
    assert_eq!(kind, "out_of_range");
    let malformed = c
        .call("click", json!({ "session_id": sid, "x": "left", "y": 1 }))
        .await;
    assert!(malformed.is_err() || malformed.unwrap().is_error == Some(true));
    let (kind, _) =
        tool_error(c, "screenshot", json!({ "session_id": "0000000000000000" })).await?;
    assert_eq!(kind, "unknown_session");
    // A secret that cannot be typed: the agent hears which character, the review does not.
    let (kind, msg) = tool_error(
        c,
        "type",
        json!({ "session_id": sid, "text": format!("{SECRET}\u{7}"), "secret": true }),
    )
    .await?;
    assert_eq!(kind, "invalid_input");
    assert!(msg.contains("U+0007"), "{msg}");

    // Eight calls at once on one session.
    let calls = (0..8).map(|i| {
        let args = match i % 4 {
            0 => ("screenshot", json!({ "session_id": sid, "scale": 0.5 })),
            1 => (
                "mouse_move",
                json!({ "session_id": sid, "x": 10 + i, "y": 10 }),
            ),
            2 => (
                "exec",
                json!({ "session_id": sid, "command": format!("echo concurrent-{i}") }),
            ),
            _ => ("wait", json!({ "session_id": sid, "ms": 20 })),
        };
        async move { c.call(args.0, args.1).await }
    });
    for r in futures::future::join_all(calls).await {
        assert_ne!(r?.is_error, Some(true), "concurrent calls succeed");
    }
    c.call_ok("key", json!({ "session_id": sid, "keys": "ctrl+l" }))
        .await?;

    let exported = c
        .call(
            "export_review",
            json!({ "session_id": sid, "name": "e2e-review" }),
        )
        .await?;
    assert_ne!(
        exported.is_error,
        Some(true),
        "{}",
        deskvm::client::text_of(&exported)
    );
    let links: Vec<String> = exported
        .content
        .iter()
        .filter_map(|b| b.as_resource_link().map(|r| r.uri.clone()))
        .collect();
    assert!(
        links.iter().any(|u| u.ends_with("/index.html")),
        "{links:?}"
    );
    let meta = exported.structured_content.clone().unwrap();
    let bundle = PathBuf::from(meta["dir"].as_str().unwrap());
    assert!(
        bundle.starts_with(&s.data),
        "exports live in the data dir: {bundle:?}"
    );

    // The bundle over MCP, as a client on another machine reads it.
    let uri = meta["resource"].as_str().unwrap().to_string();
    assert!(c.resource_uris().await?.contains(&uri));
    let page = c.read_resource(&uri).await?;
    let text = match &page[0] {
        rmcp::model::ResourceContents::TextResourceContents { text, .. } => text.clone(),
        other => panic!("index.html should be text: {other:?}"),
    };
    assert_eq!(text, std::fs::read_to_string(bundle.join("index.html"))?);
    let escape = c
        .read_resource("deskvm://exports/../reviews/x/timeline.jsonl")
        .await;
    assert!(escape.is_err(), "URIs cannot leave the exports dir");

    // Moved elsewhere, every reference still resolves.
    let moved = s.data.join("moved-away").join("bundle");
    std::fs::create_dir_all(moved.parent().unwrap())?;
    std::fs::rename(&bundle, &moved)?;
    let ev = events(&moved)?;
    seqs_are_gapless(&ev);
    let steps: Vec<&Value> = ev.iter().filter(|e| e["kind"] != "frame").collect();
    let mut refs = BTreeSet::new();
    for e in &ev {
        for k in ["before", "shot"] {
            if let Some(r) = e[k].as_str() {
                assert!(r.starts_with("shots/") && !r.contains(".."), "{r}");
                let png = image::open(moved.join(r)).with_context(|| format!("{r} resolves"))?;
                assert_eq!((png.width(), png.height()), (1280, 800));
                refs.insert(r.to_string());
            }
        }
    }
    let review: Value = serde_json::from_slice(&std::fs::read(moved.join("review.json"))?)?;
    assert_eq!(review["counts"]["shots"].as_u64(), Some(refs.len() as u64));
    assert_eq!(review["missing_shots"], json!([]));
    for f in files_under(&moved) {
        let bytes = std::fs::read(&f)?;
        let hay = String::from_utf8_lossy(&bytes);
        assert!(!hay.contains(SECRET), "the secret leaked into {f:?}");
        for old in [
            bundle.to_string_lossy(),
            s.data.to_string_lossy(),
            s.runtime.to_string_lossy(),
        ] {
            assert!(
                !hay.contains(old.as_ref()),
                "{f:?} holds the absolute path {old}"
            );
        }
    }

    // What the timeline says.
    let tools: Vec<&str> = steps
        .iter()
        .map(|e| e["tool"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(steps[0]["kind"], "session_started");
    let secret = steps
        .iter()
        .find(|e| e["tool"] == "type" && e["args"]["secret"] == true)
        .expect("the secret type call is recorded");
    assert_eq!(
        secret["args"]["text"],
        json!({ "secret": true, "length": SECRET.len() + 1 })
    );
    let off = steps
        .iter()
        .find(|e| e["kind"] == "action_failed" && e["args"]["x"] == 5000.0)
        .expect("the off-screen click is recorded");
    assert_eq!(off["error"]["error"], "out_of_range");
    assert_eq!(off["error"]["field"], "x");
    assert_eq!(off["error"]["valid"], "0..=1279");
    assert!(steps.iter().any(|e| e["error"]["field"] == "count"));
    let refused_secret = steps
        .iter()
        .find(|e| e["kind"] == "action_failed" && e["args"]["secret"] == true)
        .expect("the refused secret is recorded");
    let m = refused_secret["error"]["message"].as_str().unwrap();
    assert!(m.contains("withheld") && !m.contains("U+0007"), "{m}");
    assert!(
        steps
            .iter()
            .any(|e| e["kind"] == "action_failed" && e["error"]["error"] == "invalid_params"),
        "the malformed call is recorded: {tools:?}"
    );
    let click = steps
        .iter()
        .find(|e| e["tool"] == "click" && e["kind"] == "action")
        .unwrap();
    assert_eq!(click["pointer"], json!({ "x": x, "y": y }));
    assert!(
        click["before"].is_string(),
        "a click keeps the screen before it"
    );
    let drag = steps.iter().find(|e| e["tool"] == "drag").unwrap();
    assert_eq!(
        drag["path"],
        json!([{ "x": 1000, "y": 600 }, { "x": 1100, "y": 650 }])
    );
    for (tool, n) in [
        ("screenshot", 1 + 2),
        ("mouse_move", 2),
        ("exec", 2 + 1),
        ("wait", 2),
    ] {
        let seen = tools.iter().filter(|t| **t == tool).count();
        assert!(
            seen >= n,
            "{tool}: {seen} recorded, expected at least {n}: {tools:?}"
        );
    }
    // Screens after actions are kept, each tied to its action.
    let frames: Vec<&Value> = ev.iter().filter(|e| e["kind"] == "frame").collect();
    assert!(!frames.is_empty(), "after-frames are recorded");
    for f in &frames {
        let of = f["of_seq"].as_u64().unwrap();
        assert!(
            ev.iter().any(|e| e["seq"] == of && e["kind"] != "frame"),
            "{f}"
        );
    }
    // The unknown session went to the server's ledger.
    let server_ledgers: Vec<PathBuf> = std::fs::read_dir(s.data.join("reviews"))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("server-")
        })
        .collect();
    assert_eq!(server_ledgers.len(), 1);
    let server_events = events(&server_ledgers[0])?;
    assert!(server_events
        .iter()
        .any(|e| e["error"]["error"] == "unknown_session"));

    // The viewer, directory form (moved) and single-file form, in a real browser.
    let single = moved.join("e2e-review.html");
    for (page, name) in [
        (moved.join("index.html"), "viewer-dir"),
        (single, "viewer-single"),
    ] {
        let dom = browser::dom(&page)?;
        let rows = dom.matches("class=\"step").count();
        assert_eq!(rows, steps.len(), "{name}: one row per step");
        assert!(
            dom.contains("data-kind=\"action_failed\""),
            "{name}: failures listed"
        );
        assert!(
            dom.contains("data-role=\"after\"") && dom.contains("data-loaded=\"1280x800\""),
            "{name}: the first step's picture loaded from file://"
        );
        assert!(!dom.contains(SECRET));
        let shot = browser::artifact_dir().join(format!("{name}.png"));
        browser::screenshot(&page, &shot)?;
        let img = image::open(&shot)?.to_rgb8();
        let colors: BTreeSet<[u8; 3]> = img.pixels().step_by(7).map(|p| p.0).collect();
        assert!(
            colors.len() > 200,
            "{name}: the rendered page looks blank ({} colors)",
            colors.len()
        );
    }

    c.call_ok("session_stop", json!({ "session_id": sid }))
        .await?;
    // A stopped session still exports, now with its stop.
    let again = c
        .call_ok(
            "export_review",
            json!({ "session_id": sid, "name": "after-stop" }),
        )
        .await?;
    let ev2 = events(Path::new(again["dir"].as_str().unwrap()))?;
    seqs_are_gapless(&ev2);
    assert!(ev2.iter().any(|e| e["kind"] == "session_stopped"));
    assert!(ev2.len() > ev.len());
    let (kind, _) = tool_error(
        c,
        "export_review",
        json!({ "session_id": sid, "name": "after-stop" }),
    )
    .await?;
    assert_eq!(kind, "invalid_name", "an export is never replaced");
    let (kind, _) = tool_error(
        c,
        "export_review",
        json!({ "session_id": sid, "name": "../x" }),
    )
    .await?;
    assert_eq!(kind, "invalid_name");
    s.client.close().await
}
