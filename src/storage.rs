//! Where deskvm keeps things: a cache (guest images, ready states) that survives restarts, a
//! runtime root (one private directory per session) that does not, and a data dir (review
//! ledgers and exported review bundles) that a person reads later.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Marker written into every directory deskvm creates, so cleanup only ever touches its own.
pub const OWNER_MARKER: &str = ".deskvm-owned";

#[derive(Debug, Clone)]
pub struct Layout {
    pub cache: PathBuf,
    pub runtime: PathBuf,
    pub data: PathBuf,
}

impl Layout {
    /// `DESKVM_CACHE_DIR` / `DESKVM_RUNTIME_DIR` / `DESKVM_DATA_DIR` override the platform
    /// defaults (`~/.cache/deskvm`, `$XDG_RUNTIME_DIR/deskvm` or `/tmp/deskvm-<uid>`,
    /// `~/.local/share/deskvm`).
    pub fn from_env() -> Self {
        let dirs = directories::ProjectDirs::from("dev", "deskvm", "deskvm");
        let cache = std::env::var_os("DESKVM_CACHE_DIR")
            .map(PathBuf::from)
            .or_else(|| dirs.as_ref().map(|d| d.cache_dir().to_path_buf()))
            .unwrap_or_else(|| std::env::temp_dir().join("deskvm-cache"));
        // Unix socket paths are limited to ~108 bytes, so the runtime root must stay short:
        // $XDG_RUNTIME_DIR when there is one, else /tmp/deskvm-<uid>.
        let runtime = std::env::var_os("DESKVM_RUNTIME_DIR")
            .map(PathBuf::from)
            .or_else(|| {
                dirs.as_ref()
                    .and_then(|d| d.runtime_dir().map(Path::to_path_buf))
            })
            // SAFETY: getuid has no preconditions and cannot fail.
            .unwrap_or_else(|| PathBuf::from(format!("/tmp/deskvm-{}", unsafe { libc::getuid() })));
        let data = std::env::var_os("DESKVM_DATA_DIR")
            .map(PathBuf::from)
            .or_else(|| dirs.as_ref().map(|d| d.data_dir().to_path_buf()))
            .unwrap_or_else(|| std::env::temp_dir().join("deskvm-data"));
        Layout {
            cache,
            runtime,
            data,
        }
    }

    /// One review ledger per session: `reviews/<session>/`.
    pub fn reviews(&self) -> PathBuf {
        self.data.join("reviews")
    }

    /// Exported review bundles: `exports/<name>/`.
    pub fn exports(&self) -> PathBuf {
        self.data.join("exports")
    }

    pub fn images(&self) -> PathBuf {
        self.cache.join("images")
    }

    pub fn sessions(&self) -> PathBuf {
        self.runtime.join("s")
    }
}

/// Whether this process runs as root (installing packages and building images need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Creates `path` (and parents) with mode 0700 and asserts the final mode, since an existing
/// directory keeps whatever mode it had.
pub fn private_dir(path: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
}

/// A private directory owned by deskvm: mode 0700 and carrying the owner marker.
pub fn owned_dir(path: &Path) -> io::Result<()> {
    private_dir(path)?;
    fs::write(
        path.join(OWNER_MARKER),
        format!("pid {}\n", std::process::id()),
    )
}

/// Whether `pid` is a running deskvm process (not merely a reused pid).
pub fn deskvm_process_alive(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("deskvm"))
        .unwrap_or(false)
}

/// Removes session directories under `sessions` whose owning server is gone. Returns them.
pub fn reap_orphan_dirs(sessions: &Path) -> Vec<PathBuf> {
    let mut reaped = Vec::new();
    for entry in fs::read_dir(sessions).into_iter().flatten().flatten() {
        let dir = entry.path();
        let owner = fs::read_to_string(dir.join(OWNER_MARKER))
            .ok()
            .and_then(|m| {
                m.trim()
                    .strip_prefix("pid ")
                    .and_then(|p| p.parse::<u32>().ok())
            });
        if let Some(pid) = owner {
            if !deskvm_process_alive(pid) && fs::remove_dir_all(&dir).is_ok() {
                reaped.push(dir);
            }
        }
    }
    reaped
}

/// Removes a directory only if deskvm created it.
pub fn remove_owned_dir(path: &Path) -> io::Result<()> {
    if path.join(OWNER_MARKER).exists() {
        fs::remove_dir_all(path)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_dirs_are_private_and_only_owned_ones_are_removed() {
        let base = std::env::temp_dir().join(format!("deskvm-storage-test-{}", std::process::id()));
        let owned = base.join("owned");
        let foreign = base.join("foreign");
        owned_dir(&owned).unwrap();
        fs::create_dir_all(&foreign).unwrap();
        let mode = fs::metadata(&owned).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        remove_owned_dir(&owned).unwrap();
        remove_owned_dir(&foreign).unwrap();
        assert!(!owned.exists());
        assert!(foreign.exists());
        fs::remove_dir_all(&base).unwrap();
    }
}
