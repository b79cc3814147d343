//! The official MCP Python SDK in a venv under `target/`, made on first use (`pip install` from
//! PyPI): an MCP client nobody here wrote, for the transports' interoperability tests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use anyhow::{bail, Context, Result};

/// The SDK version the tests pin (its legacy `sse_client` is what they drive).
pub const MCP_SDK: &str = "mcp==2.3.0";

static MAKING: Mutex<()> = Mutex::new(());

/// The venv's python, with the MCP SDK importable.
pub fn python() -> Result<PathBuf> {
    let _one = MAKING.lock().unwrap_or_else(|e| e.into_inner());
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-venv");
    let py = venv.join("bin/python");
    let ready = || {
        Command::new(&py)
            .args(["-c", "import mcp.client.sse"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if ready() {
        return Ok(py);
    }
    let status = Command::new("python3")
        .arg("-m")
        .arg("venv")
        .arg(&venv)
        .status()
        .context("python3 -m venv (CPython 3 with venv is on every machine of this kind)")?;
    if !status.success() {
        bail!("python3 -m venv {} failed", venv.display());
    }
    let out = Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check", MCP_SDK])
        .output()
        .context("pip install")?;
    if !out.status.success() || !ready() {
        bail!(
            "could not install the MCP Python SDK ({MCP_SDK}) from PyPI: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(py)
}

pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(name)
}
