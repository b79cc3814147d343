//! Which state roots hold checkpoints on an image store.
//!
//! A checkpoint's disk layers sit on a ready state (and so a guest image) in the shared image
//! store. A reclaim run from one state root must keep what another root's checkpoints need, so
//! each root that saves a checkpoint leaves a record in the store (`roots/<hash>.path`, the
//! root's path). A record whose root is gone protects nothing and is dropped when read.

use std::fs;
use std::path::{Path, PathBuf};

use std::os::unix::ffi::OsStrExt;

use sha2::{Digest, Sha256};

use super::io_context::{IoContext, IoError};
use super::Layout;

fn records(layout: &Layout) -> PathBuf {
    layout.cache.join("roots")
}

fn record_path(layout: &Layout, root: &Path) -> PathBuf {
    let hash = Sha256::digest(root.as_os_str().as_bytes());
    records(layout).join(format!("{}.path", crate::vm::spec::hex(&hash[..8])))
}

/// Records this layout's state root in its image store (idempotent).
pub fn register(layout: &Layout) -> Result<(), IoError> {
    let dir = records(layout);
    super::private_dir(&dir).at("creating the state-root records dir", &dir)?;
    let path = record_path(layout, &layout.state);
    let me = layout.state.as_os_str().as_bytes();
    if fs::read(&path).ok().as_deref() == Some(me) {
        return Ok(());
    }
    fs::write(&path, me).at("recording the state root in", &path)
}

/// The other state roots that exist and recorded themselves in this image store; records of
/// roots that are gone are removed.
pub fn others(layout: &Layout) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(records(layout))
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(bytes) = fs::read(e.path()) else {
            continue;
        };
        let root = PathBuf::from(std::ffi::OsStr::from_bytes(&bytes));
        if root == layout.state {
            continue;
        }
        if root.is_dir() {
            out.push(root);
        } else {
            let _ = fs::remove_file(e.path());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_that_are_gone_are_forgotten() {
        let base = std::env::temp_dir().join(format!("deskvm-roots-test-{}", std::process::id()));
        let layout = |state: &str| Layout {
            cache: base.join("store"),
            state: base.join(state),
            runtime: base.join("rt"),
            data: base.join("data"),
        };
        let (a, b) = (layout("a"), layout("b"));
        fs::create_dir_all(&a.state).unwrap();
        fs::create_dir_all(&b.state).unwrap();
        register(&a).unwrap();
        register(&a).unwrap();
        register(&b).unwrap();
        assert_eq!(others(&a), vec![b.state.clone()]);
        fs::remove_dir_all(&b.state).unwrap();
        assert!(others(&a).is_empty());
        assert_eq!(
            fs::read_dir(records(&a)).unwrap().count(),
            1,
            "b's record is dropped"
        );
        fs::remove_dir_all(&base).unwrap();
    }
}
