//! `--engine`: the server's pool of Docker engines, `deskvm image push`, and what `doctor`
//! says about each engine.

use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::backend::docker::{self, guest, transfer, EngineSpec};
use crate::backend::pool::Engines;
use crate::guest_image::GuestImage;
use crate::storage::Layout;
use crate::vm::spec::Accel;

pub fn parse(args: &[String]) -> Result<Vec<EngineSpec>> {
    args.iter()
        .map(|a| EngineSpec::parse(a).map_err(anyhow::Error::msg))
        .collect()
}

/// The server's engines, connected (those that do not answer are listed as down).
pub async fn pool(
    args: &[String],
    insecure: bool,
    layout: &Layout,
    accel: Accel,
) -> Result<Arc<Engines>> {
    let specs = parse(args)?;
    let pool = Engines::connect(specs, insecure, &layout.cache, accel).await?;
    Ok(Arc::new(pool))
}

/// Builds the guest image on this host's engine (unless it is up to date) and streams it to
/// every engine in `args`.
pub async fn push(args: &[String], insecure: bool, image: &str) -> Result<()> {
    if args.is_empty() {
        bail!(
            "image push needs --engine URL (repeatable): the engines to load the guest image into"
        );
    }
    let targets = parse(args)?;
    let layout = Layout::from_env();
    let local = docker::connect()
        .await
        .context("the guest image is built on this host's engine")?;
    let runtime = docker::runtime_image_tag();
    let qemu = docker::image_qemu_version(&local, &runtime)
        .await
        .with_context(|| format!("runtime image {runtime} not found; run `deskvm setup`"))?;
    let image = GuestImage::locate(&layout, image)?;
    let say = |l: &str| eprintln!("  {l}");
    // One build at a time (a second push waits, then finds it up to date); the shared cache
    // lock keeps a reclaim from removing the ready state it packs meanwhile.
    let locks = {
        let layout = layout.clone();
        tokio::task::spawn_blocking(move || {
            let build = crate::storage::CacheLock::builder(&layout, ".guest-image.lock")?;
            let cache = crate::storage::CacheLock::shared(&layout)?;
            Ok::<_, std::io::Error>((build, cache))
        })
        .await??
    };
    let tag = guest::build(&local, &layout.cache, &image, &runtime, &qemu, &say).await?;
    drop(locks);
    for target in targets {
        if target.is_local() && target.url.is_none() {
            say(&format!("{tag} is on this host's engine"));
            continue;
        }
        let to = target.connect(insecure).await?;
        say(&format!(
            "pushing {tag} to engine {} (fails after {} s without progress)",
            target.name,
            transfer::stall_bound().as_secs_f64()
        ));
        let meter = transfer::Meter::new(None);
        let shown = super::progress::show(format!("engine {}", target.name), meter.clone());
        let pushed = guest::push(&local, &to, &tag, &target.name, &meter).await;
        shown.finish();
        let pushed = pushed?;
        say(&format!(
            "engine {}: {tag} loaded, {:.1} MB in {:.1} s",
            target.name,
            pushed.bytes as f64 / 1e6,
            pushed.seconds
        ));
        println!(
            "{}",
            serde_json::json!({ "engine": target.name, "tag": pushed.tag, "bytes": pushed.bytes, "seconds": pushed.seconds })
        );
    }
    Ok(())
}

/// One line per engine: health, channel, capacity, image. False when one is unusable.
pub async fn doctor(args: &[String], insecure: bool, layout: &Layout, accel: Accel) -> bool {
    let pool = match pool(args, insecure, layout, accel).await {
        Ok(p) => p,
        Err(e) => {
            println!("FAIL  engines: {e:#}");
            return false;
        }
    };
    let mut ok = true;
    for s in pool.status().await {
        let usable = s.healthy && s.has_image;
        ok &= usable;
        let head = if usable { "ok  " } else { "FAIL" };
        let detail = match (&s.error, s.has_image) {
            (Some(e), _) => e.clone(),
            (None, false) => "no guest image: run `deskvm image push --engine ...`".into(),
            (None, true) => format!(
                "{} MiB free of {} ({} deskvm containers), channel {}, {}",
                s.memory_free_mib,
                s.memory_total_mib,
                s.deskvm_containers,
                s.channel,
                s.qemu_version
            ),
        };
        println!("{head}  engine {} ({}): {detail}", s.name, s.url);
    }
    ok
}

/// `deskvm reclaim --engine ...`: the session containers dead deskvm processes of this machine
/// left on engines elsewhere (this host's engine is covered by the main report).
pub async fn reclaim(args: &[String], insecure: bool, apply: bool) -> Result<bool> {
    let mut clean = true;
    for spec in parse(args)?.into_iter().filter(|s| !s.is_local()) {
        let docker = spec.connect(insecure).await?;
        let req = crate::storage::reclaim::Request {
            apply,
            kinds: Some(vec![crate::storage::reclaim::Kind::OrphanSession]),
            ..Default::default()
        };
        let report = crate::storage::reclaim::run_engine(&docker, &req).await;
        for c in &report.candidates {
            let verb = if apply { "removing" } else { "candidate" };
            eprintln!(
                "engine {}: {verb} container {} ({})",
                spec.name,
                c.container.as_deref().unwrap_or("?"),
                c.why
            );
        }
        for n in &report.not_touched {
            eprintln!("engine {}: not touched: {} ({})", spec.name, n.what, n.why);
        }
        for f in report.failed.iter().flatten() {
            clean = false;
            eprintln!(
                "engine {}: FAILED {}: {}",
                spec.name,
                f.item.container.as_deref().unwrap_or("?"),
                f.error
            );
        }
    }
    Ok(clean)
}
