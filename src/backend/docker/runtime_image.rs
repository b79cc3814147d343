//! Building the runtime image (QEMU and its tools, no guest) without any registry: the recipe
//! (`tools/runtime/build-rootfs.sh`) debootstraps a root filesystem on this host, and the
//! engine imports it as `deskvm-runtime:<hash of the recipe>`.

use std::path::{Path, PathBuf};

use bollard::query_parameters::{CreateImageOptions, CreateImageOptionsBuilder};
use bollard::Docker;
use futures::StreamExt;

use super::{
    docker_err, image_qemu_version, runtime_image_tag, transfer, BackendError, LABEL_QEMU,
    LABEL_VERSION, RUNTIME_RECIPE,
};
use crate::storage::{IoContext, Owner};

/// Builds the runtime image without any registry: debootstrap a rootfs with QEMU, import it.
pub async fn build_runtime_image(
    docker: &Docker,
    work_root: &Path,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<String, BackendError> {
    let tag = runtime_image_tag();
    if image_qemu_version(docker, &tag).await.is_some() {
        progress(&format!("runtime image {tag} is up to date"));
        return Ok(tag);
    }
    if !crate::storage::is_root() {
        return Err(BackendError::Setup(
            "building the runtime image needs root (debootstrap); run `sudo deskvm setup`".into(),
        ));
    }
    progress(&format!(
        "building runtime image {tag} (Debian bookworm + QEMU from bookworm-backports)"
    ));
    // In the cache, marked as this build's: a crash leaves it for reclaim, never for a guess.
    let work = work_root.join(format!("runtime-{}", std::process::id()));
    crate::storage::private_dir(&work).at("creating the build dir", &work)?;
    let (tar, version) = run_recipe(&work, progress).await?;
    progress("importing the root filesystem into Docker");
    let imported = import_rootfs(docker, &tar, &tag, &version).await;
    // The tarball is hundreds of MB: gone whether the import worked or not.
    let _ = std::fs::remove_dir_all(&work);
    imported?;
    progress(&format!("runtime image {tag} ready ({version})"));
    Ok(tag)
}

/// Runs the recipe in `work`, its output lines as progress: the root filesystem's tarball and
/// the QEMU version the recipe reports. A failed recipe's work dir is removed here; one that
/// could not be run is left to reclaim, which its owner marker points at.
async fn run_recipe(
    work: &Path,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<(PathBuf, String), BackendError> {
    let script = work.join("build-rootfs.sh");
    std::fs::write(&script, RUNTIME_RECIPE).at("writing", &script)?;
    let tar = work.join("rootfs.tar");
    let child = tokio::process::Command::new("bash")
        .arg(&script)
        .arg(&tar)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .at("running", &script)?;
    // The recipe goes on if this process dies: while it runs, the work dir is alive.
    let mut builder = Owner::me("runtime_build", None);
    builder.helper = child.id().and_then(crate::storage::owner::ProcessRef::of);
    builder
        .write(work)
        .at("writing the owner marker in", work)?;
    let out = child.wait_with_output().await.at("waiting for", &script)?;
    for line in String::from_utf8_lossy(&out.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
    {
        progress(line);
    }
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(work);
        return Err(BackendError::Setup(format!(
            "the runtime image recipe failed ({})",
            out.status
        )));
    }
    let version = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with("QEMU emulator version"))
        .unwrap_or("unknown")
        .trim()
        .to_string();
    Ok((tar, version))
}

/// `docker import` of the root filesystem as `tag`, labelled with its QEMU build and this
/// deskvm's version so that no container has to run to ask.
fn import_options(tag: &str, version: &str) -> CreateImageOptions {
    let (repo, t) = tag.split_once(':').unwrap_or((tag, "latest"));
    CreateImageOptionsBuilder::new()
        .from_src("-")
        .repo(repo)
        .tag(t)
        .changes(vec![
            format!("LABEL {LABEL_QEMU}=\"{version}\""),
            format!("LABEL {LABEL_VERSION}={}", env!("CARGO_PKG_VERSION")),
        ])
        .build()
}

/// Streams the root filesystem's tarball into this host's engine as the runtime image.
async fn import_rootfs(
    docker: &Docker,
    tar: &Path,
    tag: &str,
    version: &str,
) -> Result<(), BackendError> {
    let options = import_options(tag, version);
    let file = tokio::fs::File::open(tar)
        .await
        .at("opening the runtime root filesystem", tar)?;
    // Hundreds of MB the engine answers for only once it has them: bounded by progress
    // (`transfer`), not by the client's request timeout.
    let meter = transfer::Meter::new(file.metadata().await.ok().map(|m| m.len()));
    let body = tokio_util::io::ReaderStream::new(file);
    let body = transfer::counted(body, meter.clone());
    let client = transfer::without_deadline(docker);
    let import = async {
        let mut stream =
            client.create_image(Some(options), Some(bollard::body_try_stream(body)), None);
        while let Some(item) = stream.next().await {
            item.map_err(|e| docker_err("docker import failed", e))?;
            meter.engine_progress(None, None);
        }
        Ok::<_, BackendError>(())
    };
    transfer::watched(
        &meter,
        transfer::stall_bound(),
        transfer::Pinged::target(docker),
        import,
    )
    .await
    .map_err(transfer::stalled("importing the runtime image"))?
}
