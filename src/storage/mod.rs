//! Where deskvm keeps things, in two roots that never mix:
//!
//! - the **image store** (`DESKVM_IMAGE_DIR`, alias `DESKVM_CACHE_DIR`; default
//!   `~/.cache/deskvm`): content-addressed artifacts that are expensive to make and safe to
//!   share between servers, tests and state roots (guest images, ready states), builds in
//!   progress, and the leases that keep what live servers and kept checkpoints use;
//! - the **state root** (`DESKVM_STATE_DIR`; default `~/.local/state/deskvm`): what one user or
//!   one test made and may lose (checkpoints), and, when it is given, also the data dir
//!   (`<state>/data`: review ledgers and exports) and the runtime root (`<state>/run`: one
//!   private directory per running session) unless those are set on their own.
//!
//! Nothing in either root has to exist beforehand: every path that writes makes its directory.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::vm::spec::RuntimeFiles;

pub mod io_context;
pub mod janitor;
pub mod owner;
pub mod reclaim;
pub mod roots;
pub mod usage;

pub use io_context::{IoContext, IoError};
pub use owner::{Liveness, Owner};

#[derive(Debug, Clone)]
pub struct Layout {
    /// The image store (see the module docs); the field keeps its old name.
    pub cache: PathBuf,
    /// The state root: checkpoints.
    pub state: PathBuf,
    pub runtime: PathBuf,
    pub data: PathBuf,
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

impl Layout {
    /// The roots from the environment (`--image-dir` and `--state-dir` set these variables):
    /// `DESKVM_IMAGE_DIR` (or `DESKVM_CACHE_DIR`), `DESKVM_STATE_DIR`, `DESKVM_DATA_DIR`,
    /// `DESKVM_RUNTIME_DIR`, else the platform defaults.
    pub fn from_env() -> Self {
        let dirs = directories::ProjectDirs::from("dev", "deskvm", "deskvm");
        let cache = env_path("DESKVM_IMAGE_DIR")
            .or_else(|| env_path("DESKVM_CACHE_DIR"))
            .or_else(|| dirs.as_ref().map(|d| d.cache_dir().to_path_buf()))
            .unwrap_or_else(|| std::env::temp_dir().join("deskvm-cache"));
        let given_state = env_path("DESKVM_STATE_DIR");
        let state = given_state
            .clone()
            .or_else(|| {
                dirs.as_ref()
                    .and_then(|d| d.state_dir().map(Path::to_path_buf))
            })
            .unwrap_or_else(|| std::env::temp_dir().join("deskvm-state"));
        // Unix socket paths are limited to ~108 bytes, so the runtime root must stay short:
        // $XDG_RUNTIME_DIR when there is one, else /tmp/deskvm-<uid>.
        let runtime = env_path("DESKVM_RUNTIME_DIR")
            .or_else(|| given_state.as_ref().map(|s| s.join("run")))
            .or_else(|| {
                dirs.as_ref()
                    .and_then(|d| d.runtime_dir().map(Path::to_path_buf))
            })
            // SAFETY: getuid has no preconditions and cannot fail.
            .unwrap_or_else(|| PathBuf::from(format!("/tmp/deskvm-{}", unsafe { libc::getuid() })));
        let data = env_path("DESKVM_DATA_DIR")
            .or_else(|| given_state.as_ref().map(|s| s.join("data")))
            .or_else(|| dirs.as_ref().map(|d| d.data_dir().to_path_buf()))
            .unwrap_or_else(|| std::env::temp_dir().join("deskvm-data"));
        Layout {
            cache,
            state,
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

    /// Saved sessions (`checkpoint`): memory and device state, and the disk layer. In the
    /// state root: a checkpoint is what someone made, not an artifact anyone can rebuild.
    pub fn checkpoints(&self) -> PathBuf {
        self.state.join("checkpoints")
    }

    /// Build work dirs (runtime image root filesystems) while a build runs.
    pub fn work(&self) -> PathBuf {
        self.cache.join("work")
    }

    /// One file per running server: the images and ready states it runs from, so that a
    /// reclaim elsewhere (another version, another runtime dir) keeps them.
    pub fn instances(&self) -> PathBuf {
        self.cache.join("instances")
    }

    /// What the latest startup janitor removed (JSON), for `reclaim` to tell.
    pub fn janitor_record(&self) -> PathBuf {
        self.runtime.join("janitor-last.json")
    }
}

/// Whether a cache directory is a ready state (`images/<image>/ready-<key>`).
pub fn is_ready_dir(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("ready-"))
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

/// A private directory owned by deskvm: mode 0700 and carrying `owner`'s marker.
pub fn owned_dir(path: &Path, owner: &Owner) -> Result<(), IoError> {
    private_dir(path).at("creating directory", path)?;
    owner.write(path).at("writing the owner marker in", path)
}

/// A session's runtime dir and its tmpfs companion for screendumps, both marked with `owner`.
/// Without the companion (no tmpfs, or it could not be made) screendumps go to the runtime dir.
pub fn session_dirs(files: &RuntimeFiles, owner: &Owner) -> Result<(), IoError> {
    owned_dir(&files.dir, owner)?;
    if let (Some(root), Some(shm)) = (crate::vm::spec::shm_root(), files.shm_dir()) {
        // Made, never chmod-ed: a chmod would follow a planted symlink.
        let root_made = match fs::DirBuilder::new().mode(0o700).create(root) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
            _ => mine(root),
        }
        .at("creating the screendump dir", root);
        let made = root_made.and_then(|()| owned_dir(&shm, owner));
        if let Err(e) = made {
            tracing::warn!(error = %e, dir = %shm.display(), "screendumps stay in the runtime dir");
            // Unmarked, it would be used by nothing and removed by nothing.
            if shm.is_dir() && !files.shm_in_use() {
                let _ = fs::remove_dir_all(&shm);
            }
        }
    }
    Ok(())
}

/// `dir` is a real directory of this user, mode 0700: /dev/shm is shared by every user, and a
/// symlink or someone else's directory planted at deskvm's name must not be used.
fn mine(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::symlink_metadata(dir)?;
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    if m.file_type().is_dir() && m.uid() == uid && m.mode() & 0o077 == 0 {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{} is not a private directory of uid {uid}",
            dir.display()
        )))
    }
}

/// Removes what [`session_dirs`] made (both, even if one fails; the first error is returned).
pub fn remove_session_dirs(files: &RuntimeFiles) -> Result<(), IoError> {
    let shm = files.shm_dir().map_or(Ok(()), |d| remove_owned_dir(&d));
    let dir = remove_owned_dir(&files.dir);
    shm.and(dir)
}

/// Records this server (`owner`: what it runs from) in the cache until [`unregister_instance`].
pub fn register_instance(layout: &Layout, owner: &Owner) -> Result<(), IoError> {
    let dir = layout.instances();
    private_dir(&dir).at("creating the instance records dir", &dir)?;
    let path = dir.join(format!("{}.json", owner.instance));
    owner.save(&path).at("writing the instance record", &path)
}

/// Notes what this server exposes in its record (`doctor` lists it).
pub fn describe_instance(layout: &Layout, serving: &str) {
    let path = layout
        .instances()
        .join(format!("{}.json", owner::instance_id()));
    if let Some(mut me) = Owner::load(&path) {
        me.serving = Some(serving.to_string());
        let _ = me.save(&path);
    }
}

pub fn unregister_instance(layout: &Layout) {
    let _ = fs::remove_file(
        layout
            .instances()
            .join(format!("{}.json", owner::instance_id())),
    );
}

/// Removes a directory only if deskvm created it.
pub fn remove_owned_dir(path: &Path) -> Result<(), IoError> {
    if path.join(owner::MARKER).exists() {
        fs::remove_dir_all(path).at("removing directory", path)
    } else {
        Ok(())
    }
}

/// An advisory lock on the cache (flock on `cache/.lock`): session starts hold it shared while
/// they pick the image and ready state and record that they use them; reclaim holds it
/// exclusively while it decides what is superseded and deletes it. Released on drop (and by
/// the kernel when the process dies).
pub struct CacheLock {
    _file: fs::File,
}

impl CacheLock {
    pub fn shared(layout: &Layout) -> Result<Self, IoError> {
        Self::take(layout, libc::LOCK_SH)
    }

    pub fn exclusive(layout: &Layout) -> Result<Self, IoError> {
        Self::take(layout, libc::LOCK_EX)
    }

    /// One builder at a time of something made from the cache (`name`: a lock file of its
    /// own, e.g. the guest Docker image: two pushes at once build it once).
    pub fn builder(layout: &Layout, name: &str) -> Result<Self, IoError> {
        Self::take_on(layout, name, libc::LOCK_EX)
    }

    fn take(layout: &Layout, how: libc::c_int) -> Result<Self, IoError> {
        Self::take_on(layout, ".lock", how)
    }

    fn take_on(layout: &Layout, name: &str, how: libc::c_int) -> Result<Self, IoError> {
        use std::os::fd::AsRawFd;
        private_dir(&layout.cache).at("creating the image store", &layout.cache)?;
        let path = layout.cache.join(name);
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .at("opening the lock file", &path)?;
        // SAFETY: flock on a descriptor this function owns; it blocks at most while another
        // holder deletes or records, and returns an error code rather than touching memory.
        if unsafe { libc::flock(file.as_raw_fd(), how) } != 0 {
            return Err(io::Error::last_os_error()).at("locking", &path);
        }
        Ok(CacheLock { _file: file })
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
        owned_dir(&owned, &Owner::me("test", None)).unwrap();
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
