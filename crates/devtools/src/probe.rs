//! The view page as a program sees it through Chromium ([`crate::cdp`]): whether it is live, its
//! canvas's pixels, where a screen pixel is on the page, when the canvas changed. The bench
//! and the tests use these.

use std::time::Duration;

use anyhow::{Context, Result};
use base64::Engine;
use serde_json::Value;

use crate::cdp::Page;

/// Waits until the page shows the desktop: connected, and a frame drawn.
pub async fn wait_live(page: &Page<'_>, timeout: Duration) -> Result<()> {
    let waited = page
        .wait_for(
            "(() => { const v = window.deskvmView; const c = v && v.canvas(); \
           if (!v || !v.connected || !c || c.width < 64) return false; \
           const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; \
           for (let i = 0; i < d.length; i += 4096) if (d[i] || d[i+1] || d[i+2]) return true; \
           return false; })()",
            timeout,
        )
        .await;
    if let Err(e) = waited {
        // What the page showed, so a failure says which step never came: no page, no
        // connection, or a connection and no frame.
        let seen = page
            .eval(
                "(() => { const v = window.deskvmView; const c = v && v.canvas(); \
                   const s = document.getElementById('status'); \
                   return { url: location.href, view: !!v, connected: !!(v && v.connected), \
                            ended: !!(v && v.ended), canvas: c ? [c.width, c.height] : null, \
                            status: s ? s.textContent : null }; })()",
            )
            .await
            .unwrap_or_else(|e| Value::String(format!("the page did not answer: {e}")));
        return Err(e.context(format!(
            "the view page did not show the desktop; it showed {seen}"
        )));
    }
    Ok(())
}

/// The canvas's size in screen pixels.
pub async fn canvas_size(page: &Page<'_>) -> Result<(u32, u32)> {
    let v = page
        .eval("(() => { const c = window.deskvmView.canvas(); return [c.width, c.height]; })()")
        .await?;
    Ok((
        v[0].as_u64().context("width")? as u32,
        v[1].as_u64().context("height")? as u32,
    ))
}

/// RGBA pixels of a region of the canvas (screen pixels).
pub async fn canvas_region(page: &Page<'_>, x: u32, y: u32, w: u32, h: u32) -> Result<Vec<u8>> {
    let v = page
        .eval(&format!(
            "(() => {{ const d = window.deskvmView.canvas().getContext('2d').getImageData({x}, {y}, {w}, {h}).data; \
               let s = ''; for (let i = 0; i < d.length; i += 8192) s += String.fromCharCode.apply(null, d.subarray(i, i + 8192)); \
               return btoa(s); }})()"
        ))
        .await?;
    let b64 = v.as_str().context("canvas pixels")?;
    Ok(base64::engine::general_purpose::STANDARD.decode(b64)?)
}

/// Where screen pixel (x, y) is on the page (the canvas is scaled to the window).
pub async fn page_point(page: &Page<'_>, x: u32, y: u32) -> Result<(f64, f64)> {
    let v: Value = page
        .eval(&format!(
            "(() => {{ const c = window.deskvmView.canvas(); const r = c.getBoundingClientRect(); \
               return [r.left + ({x} + 0.5) * r.width / c.width, r.top + ({y} + 0.5) * r.height / c.height]; }})()"
        ))
        .await?;
    Ok((v[0].as_f64().context("x")?, v[1].as_f64().context("y")?))
}

/// Starts watching a region of the canvas: [`changed_at`] then gives the wall-clock time (ms
/// since the epoch) of the first animation frame on which it differed.
pub async fn watch_region(page: &Page<'_>, x: u32, y: u32, w: u32, h: u32) -> Result<()> {
    page.eval(&format!(
        "(() => {{ const c = window.deskvmView.canvas(), g = c.getContext('2d'); \
           const sum = () => {{ const d = g.getImageData({x}, {y}, {w}, {h}).data; let s = 0; \
             for (let i = 0; i < d.length; i += 4) s = (s * 31 + d[i] + 7 * d[i+1] + 13 * d[i+2]) >>> 0; return s; }}; \
           const first = sum(); window.__dvChangedAt = null; \
           const look = () => {{ if (sum() !== first) {{ window.__dvChangedAt = Date.now(); return; }} requestAnimationFrame(look); }}; \
           requestAnimationFrame(look); return true; }})()"
    ))
    .await
    .map(|_| ())
}

pub async fn changed_at(page: &Page<'_>, timeout: Duration) -> Result<u64> {
    let v = page.wait_for("window.__dvChangedAt", timeout).await?;
    v.as_u64().context("change time")
}
