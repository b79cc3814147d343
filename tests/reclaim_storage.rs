//! `deskvm reclaim` on caches, runtime dirs and engine images made for the test: superseded
//! guest images, ready states and runtime images are reported and removed while the current
//! ones, unmarked ones and those in use stay; a candidate that cannot be removed is reported as
//! a failure with its error, and what it still holds is not counted as freed.

mod common;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use common::*;
use deskvm::guest_image::ready::ReadyState;
use deskvm::guest_image::recipe::Recipe;
use deskvm::guest_image::{GuestImage, ImageMeta};

/// The image these caches hold builds of.
const DEFAULT_IMAGE: &str = "minimal";

fn recipe_hash() -> String {
    Recipe::builtin(DEFAULT_IMAGE).expect("built-in").hash()
}
use deskvm::storage::Owner;
use deskvm::vm::spec::Accel;
use serde_json::Value;

/// The test's own dirs: runtime, data (with the state root in it) and the image store.
fn env(d: &[PathBuf]) -> Vec<(&'static str, PathBuf)> {
    let mut env = state_env(&d[0], &d[1]).to_vec();
    env.push(("DESKVM_IMAGE_DIR", d[2].clone()));
    env
}

fn write(path: &Path, bytes: usize) -> Result<()> {
    std::fs::create_dir_all(path.parent().unwrap())?;
    std::fs::write(path, vec![0x5au8; bytes])?;
    Ok(())
}

/// A ready state dir as `image build` leaves it, saved by `qemu`.
fn ready(dir: &Path, qemu: &str) -> Result<()> {
    write(&dir.join("state.bin"), 64 << 10)?;
    write(&dir.join("disk.qcow2"), 16 << 10)?;
    std::fs::write(
        dir.join("meta.json"),
        serde_json::json!({ "qemu_version": qemu }).to_string(),
    )?;
    Owner::me("ready_state", None).write(dir)?;
    Ok(())
}

fn image(dir: &Path, marked: bool) -> Result<()> {
    write(&dir.join("base.qcow2"), 256 << 10)?;
    write(&dir.join("vmlinuz"), 8 << 10)?;
    write(&dir.join("initrd.img"), 8 << 10)?;
    let mut meta = ImageMeta::of_recipe(&Recipe::builtin(DEFAULT_IMAGE).expect("built-in"));
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    meta.hash = name.rsplit('-').next().unwrap().to_string();
    GuestImage::write_meta(dir, &meta)?;
    if marked {
        Owner::me("guest_image", None).write(dir)?;
    }
    Ok(())
}

fn paths(list: &Value, kind: &str) -> Vec<String> {
    let mut v: Vec<String> = list
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["kind"] == kind)
        .filter_map(|c| c["path"].as_str().map(str::to_string))
        .collect();
    v.sort();
    v
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

#[tokio::test]
async fn superseded_images_and_ready_states_go_and_current_ones_stay() -> Result<()> {
    let (d, _guard) = temp_dirs(&["rt", "rd", "rc"])?;
    let images = d[2].join("images");
    let qemu = deskvm::backend::local::qemu_version(Path::new("qemu-system-x86_64")).await?;
    // The current recipe's image, its current ready state and two superseded ones.
    let current = images.join(format!("{DEFAULT_IMAGE}-{}", recipe_hash()));
    image(&current, true)?;
    let img = GuestImage::read(current.clone()).context("the current image reads back")?;
    let spec = deskvm::session::machine_spec(&img, Accel::Tcg, None, false);
    let current_ready = ReadyState::path_for(&img, &qemu, &spec).dir;
    ready(&current_ready, &qemu)?;
    let other_build = current.join("ready-000000000000");
    ready(
        &other_build,
        "QEMU emulator version 0.1 (a build nothing runs)",
    )?;
    let other_config = current.join("ready-111111111111");
    ready(&other_config, &qemu)?;
    // An image of another recipe; one of another recipe that a live session runs from; one
    // without deskvm's marker.
    let old = images.join(format!("{DEFAULT_IMAGE}-000000000000"));
    image(&old, true)?;
    // Made an hour before the current one: stamped in the same second or the next, it could
    // count as newer (markers have whole seconds), and a newer image is never superseded.
    let mut made_earlier = Owner::me("guest_image", None);
    made_earlier.created_at -= 3600;
    made_earlier.write(&old)?;
    ready(&old.join("ready-222222222222"), &qemu)?;
    let in_use = images.join(format!("{DEFAULT_IMAGE}-0000000000aa"));
    image(&in_use, true)?;
    let live = d[0].join("s").join("00000000000000aa");
    std::fs::create_dir_all(&live)?;
    // This test process is alive: a session it "owns" is live.
    Owner::me("session", Some("00000000000000aa"))
        .uses([in_use.clone()])
        .write(&live)?;
    let foreign = images.join(format!("{DEFAULT_IMAGE}-ffffffffffff"));
    image(&foreign, false)?;
    // One a live server of another deskvm (another runtime dir) runs from: only its record in
    // the cache says so. And one newer than this deskvm's image (a newer deskvm made it).
    let other_server = images.join(format!("{DEFAULT_IMAGE}-0000000000ee"));
    image(&other_server, true)?;
    std::fs::create_dir_all(d[2].join("instances"))?;
    let mut server = Owner::me("server", None).uses([other_server.clone()]);
    server.instance = "otherver".into();
    server.save(&d[2].join("instances").join("otherver.json"))?;
    let newer = images.join(format!("{DEFAULT_IMAGE}-0000000000ff"));
    image(&newer, false)?;
    let mut made_later = Owner::me("guest_image", None);
    made_later.created_at += 3600;
    made_later.write(&newer)?;

    let (code, r, err) = cli(&["reclaim", "--json"], &env(&d))?;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        r["docker"], true,
        "the engine answers (deskvm setup starts it): {r:#}"
    );
    assert_eq!(
        paths(&r["candidates"], "guest_image"),
        vec![s(&old)],
        "{r:#}"
    );
    let mut readies = vec![s(&other_build), s(&other_config)];
    readies.sort();
    assert_eq!(paths(&r["candidates"], "ready_state"), readies, "{r:#}");
    let old_item = r["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["path"] == s(&old))
        .unwrap();
    assert!(
        old_item["bytes"].as_u64().unwrap() >= 256 << 10,
        "{old_item}"
    );
    assert!(
        old_item["why"].as_str().unwrap().contains("000000000000"),
        "{old_item}"
    );
    let untouched: Vec<&str> = r["not_touched"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["what"].as_str())
        .collect();
    assert!(untouched.contains(&s(&foreign).as_str()), "{r:#}");
    assert!(untouched.contains(&s(&newer).as_str()), "{r:#}");

    let args = [
        "reclaim",
        "--apply",
        "--json",
        "--kind",
        "guest_image",
        "--kind",
        "ready_state",
    ];
    let (code, r, err) = cli(&args, &env(&d))?;
    assert_eq!(code, 0, "{err}\n{r:#}");
    assert_eq!(r["removed"].as_array().map(Vec::len), Some(3), "{r:#}");
    for gone in [&old, &other_build, &other_config] {
        assert!(!gone.exists(), "{} should be gone", gone.display());
    }
    for kept in [
        &current,
        &current_ready,
        &in_use,
        &foreign,
        &other_server,
        &newer,
    ] {
        assert!(kept.exists(), "{} must stay", kept.display());
    }
    let freed = r["bytes_freed"].as_u64().unwrap();
    assert!(freed >= (256 + 64 * 3) << 10, "{r:#}");
    Ok(())
}

/// A candidate holding an immutable file: the failure names it, and its bytes are not freed.
#[tokio::test]
async fn a_candidate_that_cannot_be_removed_is_a_failure_with_its_error() -> Result<()> {
    let (d, _guard) = temp_dirs(&["rt", "rd", "rc"])?;
    let orphan = d[0].join("s").join("00000000000000bb");
    write(&orphan.join("disk.qcow2"), 1 << 20)?;
    let locked = orphan.join("stuck").join("locked.bin");
    write(&locked, 256 << 10)?;
    // Owned by this test process, but with another start time: a reused pid, so dead.
    let mut owner = Owner::me("session", Some("00000000000000bb"));
    owner.pid_start += 1;
    owner.write(&orphan)?;
    let chattr = std::process::Command::new("chattr")
        .arg("+i")
        .arg(&locked)
        .status()
        .context("chattr (e2fsprogs, installed by deskvm setup)")?;
    assert!(chattr.success(), "chattr +i must work here (root on ext4)");

    let args = ["reclaim", "--apply", "--json", "--kind", "orphan_session"];
    let result = cli(&args, &env(&d));
    let _ = std::process::Command::new("chattr")
        .arg("-i")
        .arg(&locked)
        .status();
    let (code, r, err) = result?;
    assert_eq!(code, 2, "a failure makes the command fail: {err}\n{r:#}");
    assert_eq!(r["removed"], serde_json::json!([]), "{r:#}");
    let failed = &r["failed"][0];
    assert_eq!(failed["path"], s(&orphan), "{r:#}");
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains("locked.bin") && error.contains("not permitted"),
        "{error}"
    );
    let remaining = failed["bytes_remaining"].as_u64().unwrap();
    assert!(remaining >= 256 << 10, "{r:#}");
    let freed = failed["bytes_freed"].as_u64().unwrap();
    assert!(
        (1 << 20..(1 << 20) + (64 << 10)).contains(&freed),
        "only what went counts: {r:#}"
    );
    assert_eq!(r["bytes_freed"].as_u64(), Some(freed));
    assert!(locked.exists());
    Ok(())
}

fn docker(args: &[&str]) -> Result<String> {
    let out = std::process::Command::new("docker").args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Imports a small image with `label` (or none) through the docker CLI.
fn import(tag: &str, label: Option<&str>, dir: &Path) -> Result<String> {
    let tar = dir.join(format!("{}.tar", tag.replace([':', '/'], "_")));
    write(&dir.join("payload/blob"), 128 << 10)?;
    let ok = std::process::Command::new("tar")
        .arg("cf")
        .arg(&tar)
        .arg("-C")
        .arg(dir.join("payload"))
        .arg(".")
        .status()?;
    anyhow::ensure!(ok.success());
    let mut args = vec!["import".to_string()];
    if let Some(l) = label {
        args.extend(["--change".into(), format!("LABEL {l}")]);
    }
    args.extend([s(&tar), tag.to_string()]);
    docker(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

#[tokio::test]
async fn old_runtime_images_go_and_foreign_ones_stay() -> Result<()> {
    let (d, _guard) = temp_dirs(&["rt", "rd", "rc", "rw"])?;
    let n = rand::random::<u32>();
    let (old, foreign) = (
        format!("deskvm-runtime:old-{n:08x}"),
        format!("deskvm-runtime:foreign-{n:08x}"),
    );
    let old_id = import(&old, Some("deskvm.version=0.0.0-test"), &d[3])?;
    let foreign_id = import(&foreign, None, &d[3])?;
    let env3 = env(&d[..3]);

    let (_, r, err) = cli(&["reclaim", "--json", "--kind", "runtime_image"], &env3)?;
    let items: Vec<&Value> = r["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["image"] == old_id.as_str())
        .collect();
    assert_eq!(items.len(), 1, "{err}\n{r:#}");
    assert!(items[0]["tags"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t == old.as_str()));
    assert!(
        r["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["image"] != foreign_id.as_str()),
        "{r:#}"
    );

    let (code, r, err) = cli(
        &["reclaim", "--apply", "--json", "--kind", "runtime_image"],
        &env3,
    )?;
    let gone = docker(&["image", "inspect", &old]).is_err();
    let foreign_stays = docker(&["image", "inspect", &foreign]).is_ok();
    let _ = docker(&["rmi", &foreign]);
    let _ = docker(&["rmi", &old]);
    assert_eq!(code, 0, "{err}\n{r:#}");
    assert!(
        r["removed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["image"] == old_id.as_str()),
        "{r:#}"
    );
    assert!(gone, "the old runtime image is gone");
    assert!(foreign_stays, "an image without deskvm's label stays");
    // The current runtime image is never a candidate.
    let current = deskvm::backend::docker::runtime_image_tag();
    assert!(
        docker(&["image", "inspect", &current]).is_ok(),
        "{current} must stay"
    );
    Ok(())
}

/// A build in progress is left alone; what a dead builder left is removed.
#[tokio::test]
async fn builds_in_progress_stay_and_dead_builds_go() -> Result<()> {
    let (d, _guard) = temp_dirs(&["rt", "rd", "rc"])?;
    let images = d[2].join("images");
    let running = images.join("debian-desktop-0000000000cc.partial");
    write(&running.join("rootfs/file"), 32 << 10)?;
    Owner::me("image_build", None).write(&running)?;
    let dead = images.join("debian-desktop-0000000000dd.partial");
    write(&dead.join("rootfs/file"), 32 << 10)?;
    let mut gone = Owner::me("image_build", None);
    gone.pid_start += 1;
    gone.write(&dead)?;
    let runtime_build = d[2].join("work").join("runtime-1");
    write(&runtime_build.join("rootfs.tar"), 32 << 10)?;
    gone.write(&runtime_build)?;

    let args = ["reclaim", "--apply", "--json", "--kind", "build_work"];
    let (code, r, err) = cli(&args, &env(&d))?;
    assert_eq!(code, 0, "{err}\n{r:#}");
    let mut expected = vec![s(&dead), s(&runtime_build)];
    expected.sort();
    assert_eq!(paths(&r["removed"], "build_work"), expected, "{r:#}");
    assert!(!dead.exists() && !runtime_build.exists());
    assert!(running.exists(), "a live build is never touched");
    let kept = r["not_touched"].as_array().unwrap();
    assert!(
        kept.iter().any(|n| n["what"] == s(&running) && n["why"].as_str().unwrap().contains("in progress")),
        "{r:#}"
    );
    Ok(())
}

/// A checkpoint made by `checkpoint`, as far as reclaim reads it: metadata and marker.
fn saved(dir: &Path, qemu: &str, parent: Option<&str>, uses: &[&Path]) -> Result<()> {
    saved_on(
        dir,
        qemu,
        parent,
        uses,
        deskvm::vm::spec::MACHINE_GENERATION,
    )
}

/// The same, on a given virtual hardware generation.
fn saved_on(
    dir: &Path,
    qemu: &str,
    parent: Option<&str>,
    uses: &[&Path],
    machine: u32,
) -> Result<()> {
    write(&dir.join("state.bin"), 64 << 10)?;
    write(&dir.join("disk.qcow2"), 16 << 10)?;
    let meta = serde_json::json!({ "name": dir.file_name().unwrap().to_string_lossy(), "qemu_version": qemu, "parent": parent, "machine": machine });
    std::fs::write(dir.join("checkpoint.json"), meta.to_string())?;
    Owner::me("checkpoint", Some("00000000000000c0"))
        .uses(uses.iter().map(|p| p.to_path_buf()))
        .write(dir)?;
    Ok(())
}

/// Checkpoints are kept unless no QEMU build sessions run can load them; even then while a
/// running session or a kept checkpoint depends on them. What a kept checkpoint sits on (a
/// ready state of another configuration, one of a gone build) is kept with it; a half-written
/// checkpoint whose writer died is build work.
#[tokio::test]
async fn checkpoints_only_go_when_nothing_can_load_them_or_depends_on_them() -> Result<()> {
    let (d, _guard) = temp_dirs(&["rt", "rd", "rc"])?;
    let qemu = deskvm::backend::local::qemu_version(Path::new("qemu-system-x86_64")).await?;
    let old_qemu = "QEMU emulator version 0.1 (a build nothing runs)";
    let img = d[2]
        .join("images")
        .join(format!("{DEFAULT_IMAGE}-{}", recipe_hash()));
    image(&img, true)?;
    let (other_config, old_ready, old_ready_used) = (
        img.join("ready-555555555555"),
        img.join("ready-333333333333"),
        img.join("ready-444444444444"),
    );
    ready(&other_config, &qemu)?;
    ready(&old_ready, old_qemu)?;
    ready(&old_ready_used, old_qemu)?;
    let ck = state_of(&d[1]).join("checkpoints");
    let fresh = ck.join("fresh");
    saved(&fresh, &qemu, None, &[&img, &other_config])?;
    let alone = ck.join("old-alone");
    saved(&alone, old_qemu, None, &[&img, &old_ready])?;
    // The QEMU build sessions run, but virtual hardware of an older deskvm.
    let gen1 = ck.join("old-hardware");
    saved_on(&gen1, &qemu, None, &[&img, &other_config], 1)?;
    let (base, used) = (ck.join("old-base"), ck.join("old-used"));
    saved(&base, old_qemu, None, &[&img, &old_ready_used])?;
    saved(
        &used,
        old_qemu,
        Some("old-base"),
        &[&img, &old_ready_used, &base],
    )?;
    // A live session (this test process owns it) runs on old-used.
    let live = d[0].join("s").join("00000000000000c1");
    std::fs::create_dir_all(&live)?;
    Owner::me("session", Some("00000000000000c1"))
        .uses([img.clone(), used.clone()])
        .write(&live)?;
    let half = ck.join("dead-writer");
    write(&half.join("state.bin"), 32 << 10)?;
    let mut gone = Owner::me("checkpoint", Some("00000000000000c2"));
    gone.pid_start += 1;
    gone.write(&half)?;

    // Another state root on the same image store (another user's or test's checkpoints)
    // recorded itself there: what its checkpoint sits on is not this reclaim's to judge.
    let (other_root, _other_guard) = temp_dirs(&["rs"])?;
    let theirs = img.join("ready-666666666666");
    ready(&theirs, old_qemu)?;
    saved(
        &other_root[0].join("checkpoints").join("theirs"),
        old_qemu,
        None,
        &[&img, &theirs],
    )?;
    let other = deskvm::storage::Layout {
        cache: d[2].clone(),
        state: other_root[0].clone(),
        runtime: d[0].clone(),
        data: d[1].clone(),
    };
    deskvm::storage::roots::register(&other)?;

    let (code, r, err) = cli(&["reclaim", "--json"], &env(&d))?;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        paths(&r["candidates"], "checkpoint"),
        vec![s(&alone), s(&gen1)],
        "{r:#}"
    );
    assert_eq!(
        paths(&r["candidates"], "ready_state"),
        vec![s(&old_ready)],
        "{r:#}"
    );
    assert_eq!(
        paths(&r["candidates"], "build_work"),
        vec![s(&half)],
        "{r:#}"
    );
    assert_eq!(r["usage"]["checkpoints"]["count"], 5, "{r:#}");
    let why = |p: &Path| {
        r["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["path"] == s(p))
            .unwrap()["why"]
            .to_string()
    };
    let old = why(&alone);
    assert!(old.contains("0.1") && old.contains("cannot load"), "{old}");
    let hw = why(&gen1);
    assert!(
        hw.contains("generation 1") && hw.contains("cannot load"),
        "{hw}"
    );
    let kept = r["not_touched"].to_string();
    assert!(
        kept.contains(&s(&used)) && kept.contains(&s(&base)),
        "{r:#}"
    );

    let args = [
        "reclaim",
        "--apply",
        "--json",
        "--kind",
        "checkpoint",
        "--kind",
        "ready_state",
        "--kind",
        "build_work",
    ];
    let (code, r, err) = cli(&args, &env(&d))?;
    assert_eq!(code, 0, "{err}\n{r:#}");
    assert_eq!(r["removed"].as_array().map(Vec::len), Some(4), "{r:#}");
    for gone in [&alone, &gen1, &old_ready, &half] {
        assert!(!gone.exists(), "{} should be gone", gone.display());
    }
    for kept in [
        &fresh,
        &base,
        &used,
        &other_config,
        &old_ready_used,
        &img,
        &theirs,
    ] {
        assert!(kept.exists(), "{} must stay", kept.display());
    }
    // Once the other root is gone, nothing needs its ready state.
    std::fs::remove_dir_all(&other_root[0])?;
    let (code, r, err) = cli(&["reclaim", "--json"], &env(&d))?;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        paths(&r["candidates"], "ready_state"),
        vec![s(&theirs)],
        "{r:#}"
    );
    Ok(())
}

/// Ledgers: a stopped session's goes when older than asked; a live server's failed (but still
/// listed) session and a running one stay; so does one younger than the limit.
#[tokio::test]
async fn ledgers_of_stopped_sessions_go_and_live_ones_stay() -> Result<()> {
    let (d, _guard) = temp_dirs(&["rt", "rd", "rc"])?;
    let ledger = |id: &str, state: &str, dead: bool| -> Result<PathBuf> {
        let dir = d[1].join("reviews").join(id);
        write(&dir.join("timeline.jsonl"), 4 << 10)?;
        let meta = serde_json::json!({ "session_id": id, "state": state, "retention_days": 14 });
        std::fs::write(dir.join("session.json"), meta.to_string())?;
        let mut owner = Owner::me("ledger", Some(id));
        if dead {
            owner.pid_start += 1;
        }
        owner.write(&dir)?;
        Ok(dir)
    };
    let stopped = ledger("00000000000000a1", "stopped", false)?;
    let crashed = ledger("00000000000000a2", "running", true)?;
    let failed_live = ledger("00000000000000a3", "failed", false)?;
    let running = ledger("00000000000000a4", "running", false)?;

    // Within retention: nothing.
    let (_, r, err) = cli(&["reclaim", "--json", "--kind", "ledger"], &env(&d))?;
    assert_eq!(
        paths(&r["candidates"], "ledger"),
        Vec::<String>::new(),
        "{err}\n{r:#}"
    );

    let args = [
        "reclaim",
        "--apply",
        "--json",
        "--kind",
        "ledger",
        "--older-than",
        "0s",
    ];
    let (code, r, err) = cli(&args, &env(&d))?;
    assert_eq!(code, 0, "{err}\n{r:#}");
    let mut gone = vec![s(&stopped), s(&crashed)];
    gone.sort();
    assert_eq!(paths(&r["removed"], "ledger"), gone, "{r:#}");
    assert!(!stopped.exists() && !crashed.exists());
    assert!(
        failed_live.exists() && running.exists(),
        "a live server's sessions keep their ledgers"
    );
    Ok(())
}
