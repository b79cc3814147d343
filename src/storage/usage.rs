//! Bytes on disk: what a directory really occupies (allocated blocks, so a sparse 4 GiB qcow2
//! that holds 300 MiB counts as 300 MiB), each inode once, without following symlinks.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::Serialize;

/// Allocated bytes under `path` (0 when it does not exist).
pub fn disk_bytes(path: &Path) -> u64 {
    let mut seen = HashSet::new();
    walk(path, &mut seen)
}

fn walk(path: &Path, seen: &mut HashSet<(u64, u64)>) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
        return 0;
    }
    let mut bytes = meta.blocks() * 512;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
            bytes += walk(&entry.path(), seen);
        }
    }
    bytes
}

/// Whether anything is left at `path` (a dangling symlink counts).
pub fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// Bytes a session occupies: its runtime dir (disk overlay, sockets, screendumps) and ledger.
#[derive(Debug, Clone, Copy, Default, Serialize, schemars::JsonSchema)]
pub struct SessionDisk {
    /// The runtime dir: mostly the copy-on-write disk overlay.
    pub runtime_bytes: u64,
    /// The review ledger (timeline and frames).
    pub ledger_bytes: u64,
}

pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_files_count_what_they_hold_and_links_count_once() {
        let dir = std::env::temp_dir().join(format!("deskvm-usage-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sparse = std::fs::File::create(dir.join("sparse")).unwrap();
        sparse.set_len(1 << 30).unwrap();
        std::fs::write(dir.join("data"), vec![7u8; 1 << 20]).unwrap();
        std::fs::hard_link(dir.join("data"), dir.join("link")).unwrap();
        let bytes = disk_bytes(&dir);
        assert!((1 << 20..(1 << 20) + (1 << 16)).contains(&bytes), "{bytes}");
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(disk_bytes(&dir), 0);
        assert_eq!(human(1536), "1.5 KiB");
    }
}
