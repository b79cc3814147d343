//! Importing a user's disk: qcow2 or raw, booted through firmware (SeaBIOS, or OVMF for a UEFI
//! disk) with no kernel from deskvm. The import converts the file into the image store, so the
//! user's original is only ever read.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::recipe::{check_user_image_name, InputProbe};
use super::{now_unix, DiskBus, Firmware, GuestImage, ImageError, ImageKind, ImageMeta};
use crate::storage::{self, IoContext, Layout};

/// What `deskvm image import` was asked for.
#[derive(Debug, Clone)]
pub struct ImportRequest {
    pub file: PathBuf,
    pub name: String,
    /// `None`: look at the disk (a GPT with an EFI system partition and no BIOS boot
    /// partition is UEFI).
    pub firmware: Option<Firmware>,
    pub disk_bus: DiskBus,
    pub width: u32,
    pub height: u32,
    pub memory_mb: u32,
}

/// The GPT partition types that tell how a disk boots.
const ESP: [u8; 16] = guid_bytes(
    0xC12A7328,
    0xF81F,
    0x11D2,
    [0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9, 0x3B],
);
const BIOS_BOOT: [u8; 16] = guid_bytes(
    0x21686148,
    0x6449,
    0x6E6F,
    [0x74, 0x4E, 0x65, 0x65, 0x64, 0x45, 0x46, 0x49],
);

/// A GUID as GPT stores it (the first three fields little-endian).
const fn guid_bytes(a: u32, b: u16, c: u16, d: [u8; 8]) -> [u8; 16] {
    let a = a.to_le_bytes();
    let (b, c) = (b.to_le_bytes(), c.to_le_bytes());
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6],
        d[7],
    ]
}

/// How the first 34 sectors of a disk say it boots: UEFI for a GPT with an EFI system
/// partition and no BIOS boot partition, else BIOS.
pub fn firmware_of(head: &[u8]) -> Firmware {
    if head.len() < 34 * 512 || &head[512..520] != b"EFI PART" {
        return Firmware::Bios;
    }
    let entries = &head[1024..34 * 512];
    let types: Vec<&[u8]> = entries.chunks(128).map(|e| &e[..16]).collect();
    let has = |t: &[u8; 16]| types.iter().any(|x| *x == t);
    if has(&ESP) && !has(&BIOS_BOOT) {
        Firmware::Uefi
    } else {
        Firmware::Bios
    }
}

async fn qemu_img(
    args: &[&std::ffi::OsStr],
    what: &str,
    file: &Path,
) -> Result<Vec<u8>, ImageError> {
    let out = tokio::process::Command::new("qemu-img")
        .args(args)
        .output()
        .await
        .at("running qemu-img (apt-get install qemu-utils) for", file)?;
    if !out.status.success() {
        return Err(ImageError::BadDisk {
            path: file.into(),
            why: format!("{what}: {}", String::from_utf8_lossy(&out.stderr).trim()),
        });
    }
    Ok(out.stdout)
}

/// The file's format as qemu-img sees it: qcow2 or raw, else an error naming what it is.
async fn format_of(file: &Path) -> Result<&'static str, ImageError> {
    let info = qemu_img(
        &["info".as_ref(), "--output=json".as_ref(), file.as_os_str()],
        "qemu-img info failed",
        file,
    )
    .await?;
    let v: serde_json::Value = serde_json::from_slice(&info).unwrap_or_default();
    match v["format"].as_str() {
        Some("qcow2") => Ok("qcow2"),
        Some("raw") => Ok("raw"),
        other => Err(ImageError::BadDisk {
            path: file.into(),
            why: format!("its format is {other:?}; import takes qcow2 or raw"),
        }),
    }
}

/// A content hash of the file and the import's options: the same disk imported the same way
/// is the same image.
fn hash_of(req: &ImportRequest) -> Result<String, ImageError> {
    let mut f = std::fs::File::open(&req.file).at("opening", &req.file)?;
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).at("reading", &req.file)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let opts = format!(
        "{:?}|{:?}|{}x{}|{}",
        req.firmware, req.disk_bus, req.width, req.height, req.memory_mb
    );
    h.update(opts.as_bytes());
    Ok(format!("{:012x}", h.digest() & 0xffff_ffff_ffff))
}

/// Imports `req.file` as image `req.name`: converted to qcow2 in the store (never written in
/// place), its firmware found out, its metadata written last.
pub async fn import(
    layout: &Layout,
    req: &ImportRequest,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<GuestImage, ImageError> {
    check_user_image_name(&req.name)?;
    if !req.file.is_file() {
        return Err(ImageError::BadDisk {
            path: req.file.clone(),
            why: "no such file".into(),
        });
    }
    let format = format_of(&req.file).await?;
    progress(&format!("hashing {} ({format})", req.file.display()));
    let file = req.clone();
    let hash = tokio::task::spawn_blocking(move || hash_of(&file))
        .await
        .map_err(|e| ImageError::BadDisk {
            path: req.file.clone(),
            why: e.to_string(),
        })??;
    let dir = GuestImage::dir_for(layout, &req.name, &hash);
    if let Some(img) = GuestImage::read(dir.clone()) {
        progress(&format!(
            "image {} is already imported: {}",
            req.name,
            img.dir.display()
        ));
        return Ok(img);
    }
    // One build or import at a time: another import of this file under this name must not
    // remove the copy this one is making. The one that waited finds the other's image.
    let lock_layout = layout.clone();
    let _one = tokio::task::spawn_blocking(move || {
        storage::CacheLock::builder(&lock_layout, ".image-build.lock")
    })
    .await
    .map_err(|e| ImageError::BadDisk {
        path: req.file.clone(),
        why: format!("waiting for another build or import: {e}"),
    })??;
    if let Some(img) = GuestImage::read(dir.clone()) {
        return Ok(img);
    }
    let work = dir.with_extension("partial");
    if work.exists() {
        std::fs::remove_dir_all(&work).at("removing an earlier import's", &work)?;
    }
    storage::private_dir(&layout.images())
        .at("creating the image store's images dir", &layout.images())?;
    std::fs::create_dir_all(&work).at("creating the import dir", &work)?;
    storage::Owner::me("image_build", None)
        .write(&work)
        .at("writing the owner marker in", &work)?;
    let base = work.join("base.qcow2");
    progress("copying the disk into the image store (the original is only read)");
    qemu_img(
        &[
            "convert".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            format.as_ref(),
            "-O".as_ref(),
            "qcow2".as_ref(),
            req.file.as_os_str(),
            base.as_os_str(),
        ],
        "qemu-img convert failed",
        &req.file,
    )
    .await?;
    let firmware = match req.firmware {
        Some(f) => f,
        None => firmware_of(&head_of(&base).await?),
    };
    let meta = ImageMeta {
        name: req.name.clone(),
        kind: ImageKind::Imported,
        hash,
        built_at_unix: now_unix(),
        width: req.width,
        height: req.height,
        memory_mb: req.memory_mb,
        user: "root".into(),
        input_probe: InputProbe::None,
        firmware: Some(firmware),
        disk_bus: req.disk_bus,
        source: req.file.display().to_string(),
    };
    GuestImage::write_meta(&work, &meta)?;
    if dir.exists() {
        // Left by a publish cut off before its metadata was readable: not an image yet.
        std::fs::remove_dir_all(&dir).at("removing an incomplete earlier import", &dir)?;
    }
    std::fs::rename(&work, &dir).at("publishing the image", &dir)?;
    storage::Owner::me("guest_image", None)
        .write(&dir)
        .at("writing the owner marker in", &dir)?;
    progress(&format!(
        "imported {} as image {} ({firmware:?} firmware, {:?} disk)",
        req.file.display(),
        req.name,
        req.disk_bus
    ));
    GuestImage::read(dir.clone()).ok_or_else(|| ImageError::BadDisk {
        path: dir,
        why: "the import is incomplete".into(),
    })
}

/// The first 34 sectors of a qcow2 disk (its partition tables).
async fn head_of(qcow2: &Path) -> Result<Vec<u8>, ImageError> {
    let out = qcow2.with_extension("head");
    let of = format!("of={}", out.display());
    let input = format!("if={}", qcow2.display());
    qemu_img(
        &[
            "dd".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            "-O".as_ref(),
            "raw".as_ref(),
            "bs=512".as_ref(),
            "count=34".as_ref(),
            input.as_ref(),
            of.as_ref(),
        ],
        "reading the partition table failed",
        qcow2,
    )
    .await?;
    let head = std::fs::read(&out).at("reading", &out)?;
    let _ = std::fs::remove_file(&out);
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gpt_with_only_an_esp_boots_uefi_else_bios() {
        let mut head = vec![0u8; 34 * 512];
        assert_eq!(firmware_of(&head), Firmware::Bios);
        head[512..520].copy_from_slice(b"EFI PART");
        head[1024..1040].copy_from_slice(&ESP);
        assert_eq!(firmware_of(&head), Firmware::Uefi);
        head[1024 + 128..1040 + 128].copy_from_slice(&BIOS_BOOT);
        assert_eq!(firmware_of(&head), Firmware::Bios);
        assert_eq!(firmware_of(&head[..100]), Firmware::Bios);
    }
}
