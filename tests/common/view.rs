//! The live view as a person's browser shows it (headless Chromium over DevTools).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use deskvm::client::Client;
use deskvm_devtools::cdp::Page;
use deskvm_devtools::probe;
use serde_json::{json, Value};

/// A `session_view` link.
pub async fn link(c: &Client, sid: &str, control: bool) -> Result<Value> {
    let v = c
        .call_ok(
            "session_view",
            json!({ "session_id": sid, "control": control }),
        )
        .await?;
    assert_eq!(v["mode"], if control { "control" } else { "view" }, "{v}");
    Ok(v)
}

/// Waits until `session_list` shows `n` live viewers of `sid` (a viewer comes and goes with
/// its socket, which the server sees a moment later); fails after `limit`.
pub async fn wait_viewers(c: &Client, sid: &str, n: u64, limit: Duration) -> Result<()> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let list = c.call_ok("session_list", json!({})).await?;
        let viewers = list["sessions"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["session_id"] == sid))
            .and_then(|s| s["viewers"].as_u64());
        if viewers == Some(n) {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            bail!("{sid} has {viewers:?} viewers, not {n}, after {limit:?}: {list}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn url(v: &Value) -> String {
    v["url"]
        .as_str()
        .expect("session_view returns url")
        .to_string()
}

/// Pixels that differ by more than a little in any channel, of `a` (RGBA) against `b` (RGB or
/// RGBA) of the same region.
fn differing(a: &[u8], b: &image::RgbaImage) -> usize {
    a.chunks(4)
        .zip(b.pixels())
        .filter(|(p, q)| (0..3).any(|i| (p[i] as i32 - q[i] as i32).abs() > 8))
        .count()
}

/// The page's canvas shows what the session's screenshot shows, in a region of the screen
/// (tried a few times: the screen may change between the two looks).
pub async fn canvas_matches_screenshot(c: &Client, sid: &str, page: &Page<'_>) -> Result<()> {
    probe::wait_live(page, Duration::from_secs(60)).await?;
    let (w, h) = probe::canvas_size(page).await?;
    let (rx, ry, rw, rh) = (0, 0, w.min(640), h.min(400));
    let mut last = 0;
    for _ in 0..6 {
        let (png, _) = c.screenshot(sid, json!({})).await?;
        let shot = image::load_from_memory(&png)?.to_rgba8();
        assert_eq!(
            (shot.width(), shot.height()),
            (w, h),
            "the canvas is the screen's size"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let canvas = probe::canvas_region(page, rx, ry, rw, rh).await?;
        let region = image::imageops::crop_imm(&shot, rx, ry, rw, rh).to_image();
        last = differing(&canvas, &region);
        if last * 1000 < (rw * rh) as usize {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bail!(
        "the view's canvas does not match the screenshot: {last} of {} pixels differ",
        rw * rh
    )
}

/// The HTTP status of a GET of `url`.
pub async fn status(url: &str) -> Result<u16> {
    Ok(reqwest::get(url)
        .await
        .with_context(|| format!("GET {url}"))?
        .status()
        .as_u16())
}
