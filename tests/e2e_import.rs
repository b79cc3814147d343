//! `deskvm image import`: a BIOS-bootable, partitioned disk made outside the recipe path
//! (`tools/make-test-disk.sh`: debootstrap and SYSLINUX, no qemu-guest-agent) is imported into
//! an image store of the test's own. Its first session cold-boots through SeaBIOS and saves a
//! ready state; screenshot, click and type work; `exec` answers `unavailable`; the second start
//! resumes; the user's file is never written.

mod common;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use common::*;
use serde_json::json;
use sha2::{Digest, Sha256};

fn sha256(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(format!("{:x}", h.finalize()))
}

/// The test disk, made once per version of its script and kept in the shared image store's
/// `test-disks/` (content-addressed, like images).
fn test_disk() -> Result<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/make-test-disk.sh");
    let key = &sha256(&script)?[..12];
    let store = std::env::var_os("DESKVM_IMAGE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| dirs_cache().join("deskvm"));
    let dir = store.join("test-disks");
    let disk = dir.join(format!("bios-{key}.raw"));
    if disk.is_file() {
        return Ok(disk);
    }
    std::fs::create_dir_all(&dir)?;
    let partial = disk.with_extension("partial");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg(&partial)
        .env("DESKVM_APT_CACHE", store.join("apt-archives"))
        .output()
        .context("running tools/make-test-disk.sh")?;
    assert!(
        out.status.success(),
        "make-test-disk.sh failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::rename(&partial, &disk)?;
    Ok(disk)
}

fn dirs_cache() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache"))
}

#[tokio::test]
async fn an_imported_bios_disk_boots_saves_a_ready_state_and_resumes() -> Result<()> {
    let disk = test_disk()?;
    let before = sha256(&disk)?;
    let (d, _guard) = temp_dirs(&["it", "id", "is"])?;
    let mut env: Vec<(&str, PathBuf)> = state_env(&d[0], &d[1]).to_vec();
    env.push(("DESKVM_IMAGE_DIR", d[2].clone()));
    let file = disk.to_string_lossy();
    let (code, _, err) = cli(&["image", "import", &file, "--name", "mydisk"], &env)?;
    assert_eq!(code, 0, "{err}");
    // A bad request names the problem before anything is copied.
    let (code, _, err) = cli(
        &[
            "image",
            "import",
            &file,
            "--name",
            "mydisk",
            "--firmware",
            "coreboot",
        ],
        &env,
    )?;
    assert_ne!(code, 0);
    assert!(err.contains("valid: bios, uefi"), "{err}");
    let (code, list, err) = cli(&["image", "list", "--json"], &env)?;
    assert_eq!(code, 0, "{err}");
    assert_eq!(list[0]["name"], "mydisk", "{list}");
    assert_eq!(list[0]["kind"], "imported", "{list}");
    assert_eq!(list[0]["ready_states"], 0, "{list}");

    let pairs: Vec<(&str, String)> = env
        .iter()
        .map(|(k, v)| (*k, v.to_string_lossy().into_owned()))
        .collect();
    let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let bin = Path::new(env!("CARGO_BIN_EXE_deskvm"));
    let c = deskvm::client::Client::spawn(bin, &["--backend", "local"], &pairs).await?;
    let first = c
        .call_ok("session_start", json!({ "image": "mydisk" }))
        .await?;
    assert_eq!(first["startup"], "first_boot", "{first}");
    let sid = sid(&first);
    let (shot, _) = c.screenshot(&sid, json!({})).await?;
    let login = image::load_from_memory(&shot)?.to_rgb8();
    let lit = login
        .pixels()
        .filter(|p| p.0.iter().any(|&v| v > 96))
        .count();
    assert!(lit > 500, "the console shows nothing ({lit} lit pixels)");
    c.call_ok("click", json!({ "session_id": sid, "x": 200, "y": 200 }))
        .await?;
    c.call_ok(
        "type",
        json!({ "session_id": sid, "text": "deskvm-was-here" }),
    )
    .await?;
    wait_stable(&c, &sid).await?;
    let (typed, _) = c.screenshot(&sid, json!({})).await?;
    assert_ne!(
        image::load_from_memory(&typed)?.to_rgb8().into_raw(),
        login.into_raw(),
        "typing at the login prompt changed nothing on screen"
    );
    let (kind, message) =
        tool_error(&c, "exec", json!({ "session_id": sid, "command": "true" })).await?;
    assert_eq!(kind, "unavailable", "{message}");
    assert!(message.contains("guest agent"), "{message}");
    c.call_ok("session_stop", json!({ "session_id": sid }))
        .await?;

    let second = c
        .call_ok("session_start", json!({ "image": "mydisk" }))
        .await?;
    assert_eq!(second["startup"], "ready_state", "{second}");
    eprintln!(
        "imported disk: first start {} ms (boot + save), second {} ms",
        first["startup_ms"], second["startup_ms"]
    );
    c.close().await?;
    assert_eq!(sha256(&disk)?, before, "the original disk was written");
    Ok(())
}
