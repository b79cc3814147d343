//! Copies of the files that went into and out of a guest, kept in the review only when the
//! operator asked (`deskvm serve --review-files`): `files/<sha256>`, named by content, so a file
//! uploaded twice is kept once. An event names its copy in `outcome.kept`.

use std::io;
use std::path::Path;

use serde_json::Value;

use crate::storage::IoContext;

pub const KEPT_DIR: &str = "files";

/// Keeps `data` (whose sha256 is `sha256`) in the review at `review_dir`; returns its reference.
pub fn keep(review_dir: &Path, sha256: &str, data: &[u8]) -> io::Result<String> {
    let dir = review_dir.join(KEPT_DIR);
    std::fs::create_dir_all(&dir).at("creating", &dir)?;
    let file = dir.join(sha256);
    if !file.is_file() {
        std::fs::write(&file, data).at("writing", &file)?;
    }
    Ok(format!("{KEPT_DIR}/{sha256}"))
}

/// Whether `r` is a reference [`keep`] writes (`files/<64 hex>`): nothing else is followed.
fn is_kept_ref(r: &str) -> bool {
    r.strip_prefix("files/")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Puts every kept file the timeline names into the bundle in `tmp`; returns how many.
pub fn copy_kept(review_dir: &Path, tmp: &Path, events: &[Value]) -> io::Result<usize> {
    let refs: std::collections::BTreeSet<&str> = events
        .iter()
        .filter_map(|e| e["outcome"]["kept"].as_str())
        .filter(|r| is_kept_ref(r))
        .collect();
    let mut copied = 0;
    for r in refs {
        let (src, dst) = (review_dir.join(r), tmp.join(r));
        if !src.is_file() {
            continue;
        }
        let parent = tmp.join(KEPT_DIR);
        std::fs::create_dir_all(&parent).at("creating", &parent)?;
        if std::fs::hard_link(&src, &dst).is_err() {
            std::fs::copy(&src, &dst).at("copying into", &dst)?;
        }
        copied += 1;
    }
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_content_named_refs_are_followed() {
        assert!(is_kept_ref(&format!("files/{}", "a".repeat(64))));
        assert!(!is_kept_ref("files/../../etc/passwd"));
        assert!(!is_kept_ref("shots/x.png"));
    }
}
