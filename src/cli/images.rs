//! `deskvm image list`, `image rm` and `image import`: the guest images in the store.

use anyhow::{bail, Result};

use crate::guest_image::import::{import as import_disk, ImportRequest};
use crate::guest_image::{GuestImage, Listed};
use crate::storage::{self, Layout};

fn say(line: &str) {
    eprintln!("  {line}");
}

/// One image as `image list` shows it.
#[derive(Debug, serde::Serialize)]
pub struct Row {
    pub name: String,
    pub current: bool,
    pub kind: crate::guest_image::ImageKind,
    pub hash: String,
    pub bytes: u64,
    pub ready_states: usize,
    pub built_at_unix: u64,
    pub width: u32,
    pub height: u32,
    pub memory_mb: u32,
    pub source: String,
    pub dir: String,
}

fn row(l: &Listed) -> Row {
    let img = &l.image;
    let ready_states = std::fs::read_dir(&img.dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            // Private ready states: a shared-memory template (its RAM file) is one's companion.
            n.starts_with("ready-")
                && !n.ends_with(".partial")
                && e.path().join("meta.json").is_file()
                && !e.path().join("ram.bin").exists()
        })
        .count();
    Row {
        name: img.name.clone(),
        current: l.current,
        kind: img.meta.kind,
        hash: img.meta.hash.clone(),
        bytes: storage::usage::disk_bytes(&img.dir),
        ready_states,
        built_at_unix: img.meta.built_at_unix,
        width: img.meta.width,
        height: img.meta.height,
        memory_mb: img.meta.memory_mb,
        source: img.meta.source.clone(),
        dir: img.dir.display().to_string(),
    }
}

/// `deskvm image list`: every image in the store, its name's current one marked.
pub fn list(json: bool) -> Result<()> {
    let layout = Layout::from_env();
    let rows: Vec<Row> = GuestImage::list(&layout).iter().map(row).collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let (_, unbuilt) = GuestImage::names(&layout);
    println!(
        "{:<16} {:<8} {:<12} {:>9} {:>6}  {:<20} SOURCE",
        "NAME", "CURRENT", "HASH", "SIZE", "READY", "BUILT (UTC)"
    );
    for r in &rows {
        println!(
            "{:<16} {:<8} {:<12} {:>9} {:>6}  {:<20} {}",
            r.name,
            if r.current { "yes" } else { "no" },
            r.hash,
            format!("{:.1} GB", r.bytes as f64 / 1e9),
            r.ready_states,
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(r.built_at_unix)
            )
            .to_string()
            .trim_end_matches('Z')
            .replace('T', " "),
            r.source
        );
    }
    for n in unbuilt {
        println!("{n:<16} (built-in recipe, not built: deskvm setup --image {n})");
    }
    Ok(())
}

/// `deskvm image rm NAME`: removes the image (every build of it with `all`, else the current
/// one) and its ready states, unless a live server or session uses it.
pub async fn rm(name: &str, all: bool) -> Result<()> {
    let layout = Layout::from_env();
    let name = crate::guest_image::canonical(name);
    let targets: Vec<Listed> = GuestImage::list(&layout)
        .into_iter()
        .filter(|l| l.image.name == name && (all || l.current))
        .collect();
    if targets.is_empty() {
        let (built, _) = GuestImage::names(&layout);
        bail!(
            "no image {name:?} in the store; images: {}",
            if built.is_empty() {
                "none".into()
            } else {
                built.join(", ")
            }
        );
    }
    let l = layout.clone();
    let _lock = tokio::task::spawn_blocking(move || storage::CacheLock::exclusive(&l)).await??;
    for t in &targets {
        crate::guest_image::refuse_in_use(&layout, name, &t.image.dir)?;
    }
    for t in targets {
        let bytes = storage::usage::disk_bytes(&t.image.dir);
        storage::remove_owned_dir(&t.image.dir)?;
        println!(
            "removed image {} ({}, {:.1} GB): {}",
            t.image.name,
            t.image.meta.hash,
            bytes as f64 / 1e9,
            t.image.dir.display()
        );
    }
    Ok(())
}

/// `deskvm image import FILE --name N`.
pub async fn import(req: ImportRequest) -> Result<()> {
    let layout = Layout::from_env();
    let img = import_disk(&layout, &req, &say).await?;
    println!(
        "image {} imported: {} (its first session cold-boots and saves a ready state; later ones resume)",
        img.name,
        img.dir.display()
    );
    Ok(())
}

/// The import's options, checked before anything is copied.
pub fn import_request(
    file: std::path::PathBuf,
    name: String,
    firmware: Option<String>,
    bus: &str,
    (width, height): (u32, u32),
    memory_mb: u32,
) -> Result<ImportRequest> {
    use crate::guest_image::{DiskBus, Firmware};
    use crate::vm::spec::{HEIGHT_RANGE, MEMORY_RANGE, WIDTH_RANGE};
    let firmware = match firmware.as_deref() {
        None => None,
        Some("bios") => Some(Firmware::Bios),
        Some("uefi") => Some(Firmware::Uefi),
        Some(other) => bail!("--firmware {other:?}: valid: bios, uefi"),
    };
    let disk_bus = match bus {
        "sata" => DiskBus::Sata,
        "virtio" => DiskBus::Virtio,
        other => bail!("--bus {other:?}: valid: sata, virtio"),
    };
    for (flag, v, (lo, hi)) in [
        ("--width", width, WIDTH_RANGE),
        ("--height", height, HEIGHT_RANGE),
        ("--memory-mb", memory_mb, MEMORY_RANGE),
    ] {
        if !(lo..=hi).contains(&v) {
            bail!("{flag} {v} is outside {lo}..={hi}");
        }
    }
    Ok(ImportRequest {
        file,
        name,
        firmware,
        disk_bus,
        width,
        height,
        memory_mb,
    })
}
