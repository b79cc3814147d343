//! Debian's Chromium, headless, as a person's browser would open a review: from `file://`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

fn chromium() -> Result<PathBuf> {
    deskvm_devtools::cdp::chromium().context("the viewer tests need a real browser")
}

fn run(url: &str, extra: &[String]) -> Result<std::process::Output> {
    let profile = std::env::temp_dir().join(format!("dvchrome-{}", rand::random::<u64>()));
    let out = Command::new(chromium()?)
        .args(deskvm_devtools::cdp::HEADLESS)
        .arg("--virtual-time-budget=5000")
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()
        .context("running chromium")?;
    let _ = std::fs::remove_dir_all(profile);
    if !out.status.success() {
        bail!(
            "chromium failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// The page's DOM after its scripts ran.
pub fn dom(page: &Path) -> Result<String> {
    dom_url(&format!("file://{}", page.display()))
}

/// The DOM of a page served over HTTP, after its scripts ran.
pub fn dom_url(url: &str) -> Result<String> {
    Ok(String::from_utf8_lossy(&run(url, &["--dump-dom".into()])?.stdout).into_owned())
}

/// A 1280x900 screenshot of the page, written to `out`.
pub fn screenshot(page: &Path, out: &Path) -> Result<()> {
    run(
        &format!("file://{}", page.display()),
        &[
            "--window-size=1280,900".into(),
            format!("--screenshot={}", out.display()),
        ],
    )?;
    if !out.is_file() {
        bail!("chromium wrote no screenshot to {}", out.display());
    }
    Ok(())
}

/// Where test artifacts (viewer screenshots) are kept for a person to look at.
pub fn artifact_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    let _ = std::fs::create_dir_all(&dir);
    dir
}
