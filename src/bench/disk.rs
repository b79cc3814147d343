//! Disk figures: what one session holds after a scripted session, what stop and `reclaim apply`
//! give back, and how long a `reclaim` report takes on a cache with several images.

use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::{ms, summary};
use crate::client::Client;
use crate::storage::usage::human;
use crate::storage::{Layout, Owner};

pub struct Before {
    runtime: u64,
    ledger: u64,
    total: u64,
}

/// Sessions' runtime dirs, ledgers and exports: what deskvm's data grows by (the cache does not).
fn data_bytes(report: &Value) -> u64 {
    let u = &report["usage"];
    ["sessions", "ledgers", "exports"]
        .iter()
        .map(|k| u[k]["bytes"].as_u64().unwrap_or(0))
        .sum()
}

async fn report(client: &Client) -> Result<Value> {
    client
        .call_ok("reclaim", json!({ "kinds": ["ledger"] }))
        .await
}

pub async fn before_stop(client: &Client, sid: &str) -> Result<Before> {
    let list = client.call_ok("session_list", json!({})).await?;
    let disk = list["sessions"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["session_id"] == sid))
        .map(|s| s["disk"].clone())
        .context("session_list lists the session with its disk use")?;
    Ok(Before {
        runtime: disk["runtime_bytes"].as_u64().unwrap_or(0),
        ledger: disk["ledger_bytes"].as_u64().unwrap_or(0),
        total: data_bytes(&report(client).await?),
    })
}

/// After the session of `n` actions stopped: what stop gave back, then `reclaim apply` of the
/// bench's stopped ledgers (older than 0 s) and its export.
pub async fn after_stop(client: &Client, n: usize, before: Before) -> Result<()> {
    let stopped = data_bytes(&report(client).await?);
    let t = Instant::now();
    let args = json!({ "mode": "apply", "kinds": ["ledger", "export"], "older_than": "0s", "include": [format!("bench-{n}")] });
    let applied = client.call_ok("reclaim", args).await?;
    let took = ms(t.elapsed());
    let after = data_bytes(&report(client).await?);
    println!(
        "{:<38} runtime dir (disk overlay) {}, ledger {} after {n} actions",
        "disk per session",
        human(before.runtime),
        human(before.ledger)
    );
    println!(
        "{:<38} before stop {}, after stop {}, after reclaim apply {} (freed {} in {took:.0} ms, {} failed)",
        "disk: sessions + ledgers + exports",
        human(before.total),
        human(stopped),
        human(after),
        human(applied["bytes_freed"].as_u64().unwrap_or(0)),
        applied["failed"].as_array().map_or(0, Vec::len)
    );
    Ok(())
}

/// A cache of `images` guest images of other recipes with two ready states each (sparse
/// files: a scan stats them, it never reads them).
fn synthetic_cache(layout: &Layout, images: usize) -> Result<()> {
    // This deskvm's own image, built: only then are the others superseded.
    use crate::guest_image::{recipe::Recipe, GuestImage, ImageMeta};
    let recipe = Recipe::builtin("minimal").context("the built-in minimal recipe")?;
    let current = GuestImage::dir_for(layout, &recipe.name, &recipe.hash());
    std::fs::create_dir_all(&current)?;
    std::fs::File::create(current.join("base.qcow2"))?.set_len(4 << 30)?;
    std::fs::write(current.join("vmlinuz"), [0u8; 4096])?;
    std::fs::write(current.join("initrd.img"), [0u8; 4096])?;
    GuestImage::write_meta(&current, &ImageMeta::of_recipe(&recipe))?;
    Owner::me("guest_image", None).write(&current)?;
    for i in 0..images {
        let dir = layout.images().join(format!("minimal-{i:012x}"));
        std::fs::create_dir_all(&dir)?;
        std::fs::File::create(dir.join("base.qcow2"))?.set_len(4 << 30)?;
        std::fs::write(dir.join("vmlinuz"), [0u8; 4096])?;
        std::fs::write(dir.join("initrd.img"), [0u8; 4096])?;
        Owner::me("guest_image", None).write(&dir)?;
        for r in 0..2 {
            let ready = dir.join(format!("ready-{r:012x}"));
            std::fs::create_dir_all(&ready)?;
            std::fs::File::create(ready.join("state.bin"))?.set_len(200 << 20)?;
            std::fs::File::create(ready.join("disk.qcow2"))?.set_len(1 << 20)?;
            std::fs::write(ready.join("meta.json"), r#"{"qemu_version":"QEMU 0.0"}"#)?;
            Owner::me("ready_state", None).write(&ready)?;
        }
    }
    Ok(())
}

pub async fn reclaim_report_time(client: &Client, runs: usize) -> Result<()> {
    let mut tool = Vec::new();
    let mut last = Value::Null;
    for _ in 0..runs {
        let t = Instant::now();
        last = client.call_ok("reclaim", json!({})).await?;
        tool.push(ms(t.elapsed()));
    }
    let u = &last["usage"];
    summary(
        &format!(
            "reclaim report (tool; {} image, {} ready)",
            u["guest_images"]["count"], u["ready_states"]["count"]
        ),
        tool,
    );
    let base = std::env::temp_dir().join(format!("deskvm-bench-cache-{}", std::process::id()));
    let layout = Layout {
        cache: base.join("cache"),
        state: base.join("state"),
        runtime: base.join("rt"),
        data: base.join("data"),
    };
    let images = 8;
    let measured = async {
        synthetic_cache(&layout, images)?;
        let mut inproc = Vec::new();
        let req = crate::storage::reclaim::Request::default();
        for _ in 0..runs {
            let t = Instant::now();
            let r = crate::session::reclaim::run(&layout, &req).await?;
            inproc.push(ms(t.elapsed()));
            anyhow::ensure!(
                r.candidates.len() == images,
                "expected {images} candidates: {}",
                serde_json::to_string(&r).unwrap_or_default()
            );
        }
        Ok::<_, anyhow::Error>(inproc)
    }
    .await;
    let _ = std::fs::remove_dir_all(&base);
    summary(
        &format!("reclaim report ({images} images, {} ready)", images * 2),
        measured?,
    );
    Ok(())
}
