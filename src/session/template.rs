//! Shared-memory templates (QEMU's VM templating): a ready state whose guest RAM is a file.
//! Sessions map that file private and read-only, so every session shares the pages it has not
//! written, and a start loads only the device state instead of the whole RAM image.
//!
//! A template is made from the private ready state without booting: a builder VM maps a new RAM
//! file shared, loads the private state into it (the pages land in the file), and saves its
//! device state with `x-ignore-shared`, leaving the RAM out.

use std::path::Path;
use std::time::Duration;

use super::boot::qemu_img_overlay;
use super::SessionError;
use crate::backend::Backend;
use crate::guest_image::ready::ReadyState;
use crate::guest_image::GuestImage;
use crate::storage::IoContext;
use crate::storage::{self, Layout, Owner};
use crate::vm::spec::{RuntimeFiles, VmSpec};
use crate::vm::{Vm, VmError};

/// Makes the template of `spec`'s machine from its private ready state, unless there is one.
/// Holds the cache lock exclusively, so servers starting together make it once.
pub async fn ensure(
    layout: &Layout,
    backend: &dyn Backend,
    image: &GuestImage,
    spec: &VmSpec,
) -> Result<ReadyState, SessionError> {
    let qemu = backend.qemu_version();
    if let Some(t) = ReadyState::find_template(image, qemu, spec) {
        return Ok(t);
    }
    if !maps_read_only_files_privately(qemu) {
        return Err(SessionError::Setup(format!(
            "{qemu} cannot map a read-only RAM file privately (memory-backend-file rom=off needs QEMU 8.2)"
        )));
    }
    let Some(private) = ReadyState::find(image, qemu, spec) else {
        return Err(SessionError::Setup(
            "no ready state to make a shared-memory template from (run `deskvm image build`)"
                .into(),
        ));
    };
    let l = layout.clone();
    let _lock = tokio::task::spawn_blocking(move || storage::CacheLock::exclusive(&l))
        .await
        .map_err(|source| SessionError::Task {
            what: "locking the image store",
            source,
        })??;
    if let Some(t) = ReadyState::find_template(image, qemu, spec) {
        return Ok(t);
    }
    let started = std::time::Instant::now();
    let made = make(layout, backend, image, spec, &private).await?;
    tracing::info!(
        ms = started.elapsed().as_millis() as u64,
        dir = %made.dir.display(),
        "shared-memory template made from the ready state"
    );
    Ok(made)
}

/// `rom=off` (a private, writable mapping of a read-only file) came in QEMU 8.2.
fn maps_read_only_files_privately(qemu_version: &str) -> bool {
    let version = qemu_version
        .split_whitespace()
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()));
    let mut parts = version
        .unwrap_or("0")
        .split('.')
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (8, 2)
}

async fn make(
    layout: &Layout,
    backend: &dyn Backend,
    image: &GuestImage,
    spec: &VmSpec,
    private: &ReadyState,
) -> Result<ReadyState, SessionError> {
    let target = ReadyState::template_path(image, backend.qemu_version(), spec);
    // The builder's files sit in the runtime dir (a container writes only there); the RAM file
    // is mapped shared and written by QEMU, so it is made there too and moved afterwards.
    let work = layout
        .sessions()
        .join(format!("ready-template-{}", std::process::id()));
    let _ = storage::remove_owned_dir(&work);
    let builder = Owner::me("ready_build", None).uses([image.dir.clone(), private.dir.clone()]);
    storage::owned_dir(&work, &builder)?;
    let result = build_in(backend, spec, private, &work, &target).await;
    let _ = storage::remove_owned_dir(&work);
    result
}

async fn build_in(
    backend: &dyn Backend,
    spec: &VmSpec,
    private: &ReadyState,
    work: &Path,
    target: &ReadyState,
) -> Result<ReadyState, SessionError> {
    let files = RuntimeFiles {
        dir: work.to_path_buf(),
    };
    let ram = work.join("ram.bin");
    let mut builder = spec.clone().with_template(ram.clone(), true);
    builder.incoming = Some(private.state());
    builder.paused = true;
    qemu_img_overlay(&private.disk(), &files.disk()).await?;
    let mut instance = backend.launch("template", &builder, &files).await?;
    let saved = async {
        let vm = Vm::attach(
            instance.link(),
            spec.width,
            spec.height,
            Duration::from_secs(30),
        )
        .await?;
        let qmp = vm.qmp();
        qmp.wait_loaded(Duration::from_secs(60)).await?;
        qmp.ignore_shared_memory(true).await?;
        qmp.save_state(&work.join("state.bin"), Duration::from_secs(60))
            .await?;
        qmp.quit().await;
        Ok::<_, VmError>(())
    }
    .await;
    instance.stop().await;
    saved?;
    // Pages the loader never wrote are holes already; zero pages it did write become holes.
    let _ = tokio::process::Command::new("fallocate")
        .arg("--dig-holes")
        .arg(&ram)
        .status()
        .await;
    let partial = ReadyState {
        dir: target.dir.with_extension("partial"),
    };
    let _ = std::fs::remove_dir_all(&partial.dir);
    let placed = place(backend, private, work, &files, &ram, &partial, target).await;
    if placed.is_err() {
        let _ = std::fs::remove_dir_all(&partial.dir);
    }
    placed
}

/// Puts the template's files into `partial`, then `partial` where the template goes.
async fn place(
    backend: &dyn Backend,
    private: &ReadyState,
    work: &Path,
    files: &RuntimeFiles,
    ram: &Path,
    partial: &ReadyState,
    target: &ReadyState,
) -> Result<ReadyState, SessionError> {
    storage::owned_dir(
        &partial.dir,
        &Owner::me("ready_state", None).uses([private.dir.clone()]),
    )?;
    for (from, to) in [
        (ram.to_path_buf(), partial.ram()),
        (work.join("state.bin"), partial.state()),
        (files.disk(), partial.disk()),
    ] {
        move_sparse(&from, &to).await?;
    }
    partial.seal()?;
    let meta = serde_json::json!({
        "qemu_version": backend.qemu_version(),
        "memory": "template",
        "from": private.dir,
        "from_stamp": private.stamp(),
        "saved_at_unix": storage::owner::unix_now(),
    });
    partial.publish(target, &meta)?;
    Ok(target.clone())
}

/// Renames, or copies keeping holes when the runtime dir is another filesystem.
async fn move_sparse(from: &Path, to: &Path) -> Result<(), SessionError> {
    if std::fs::rename(from, to).is_ok() {
        return Ok(());
    }
    let out = tokio::process::Command::new("cp")
        .arg("--sparse=always")
        .arg(from)
        .arg(to)
        .output()
        .await
        .at("running cp --sparse=always to", to)?;
    if !out.status.success() {
        return Err(SessionError::Setup(format!(
            "could not copy {} into the cache: {}",
            from.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let _ = std::fs::remove_file(from);
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn private_mappings_of_read_only_files_need_qemu_8_2() {
        let ok = super::maps_read_only_files_privately;
        assert!(ok(
            "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)"
        ));
        assert!(ok("QEMU emulator version 8.2.0"));
        assert!(!ok("QEMU emulator version 8.1.5"));
        assert!(!ok(
            "QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u7)"
        ));
        assert!(!ok("unknown"));
    }
}
