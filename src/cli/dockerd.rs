//! Engine launch: `deskvm setup` starts this host's Docker engine when it is installed but not
//! answering, as a service would (its own session, a log file), and waits for it.

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::host_packages::on_path;
use crate::backend::docker;

/// Starts dockerd in the background when it is installed but not answering (root only).
pub async fn ensure() -> Result<()> {
    if docker::connect().await.is_ok() {
        return Ok(());
    }
    if std::env::var_os("DOCKER_HOST").is_some() {
        bail!("DOCKER_HOST is set but the engine there does not answer");
    }
    if !crate::storage::is_root()
        || !(on_path("dockerd") || Path::new("/usr/sbin/dockerd").is_file())
    {
        bail!("the Docker engine is not running; start it (`sudo dockerd &`) or run `sudo deskvm setup`");
    }
    eprintln!(
        "deskvm setup: starting dockerd in the background (log: /var/log/deskvm-dockerd.log)"
    );
    let log = std::fs::File::create("/var/log/deskvm-dockerd.log")?;
    let mut cmd = std::process::Command::new("dockerd");
    cmd.stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // Its own session: dockerd outlives this command, as a service would.
    // SAFETY: setsid is async-signal-safe, the one call allowed between fork and exec here.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::setsid();
            Ok(())
        });
    }
    cmd.spawn().context("starting dockerd")?;
    for _ in 0..60 {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        if docker::connect().await.is_ok() {
            return Ok(());
        }
    }
    bail!("dockerd did not answer within 30 s; see /var/log/deskvm-dockerd.log")
}
