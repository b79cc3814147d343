//! I/O errors that say what was being done and to which path (`creating checkpoint dir
//! /…/checkpoints/foo: No such file or directory (os error 2)`), not a bare `os error 2` that
//! leaves the reader to guess which of a dozen files was missing.

use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// An operation on a path that failed; the OS error is the `#[source]`.
#[derive(Debug, Error)]
#[error("{op} {}", .path.display())]
pub struct IoError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl IoError {
    pub fn new(op: &'static str, path: &Path, source: io::Error) -> Self {
        IoError {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    pub fn kind(&self) -> io::ErrorKind {
        self.source.kind()
    }
}

/// `.at("creating checkpoint dir", &dir)?` on any `io::Result`.
pub trait IoContext<T> {
    fn at(self, op: &'static str, path: &Path) -> Result<T, IoError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, op: &'static str, path: &Path) -> Result<T, IoError> {
        self.map_err(|source| IoError::new(op, path, source))
    }
}

/// Code that returns `io::Result` keeps the context: the `io::Error` carries the `IoError`
/// (its message names the operation and path, its source is the OS error).
impl From<IoError> for io::Error {
    fn from(e: IoError) -> io::Error {
        io::Error::new(e.source.kind(), e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(e: &dyn std::error::Error) -> String {
        let mut out = e.to_string();
        let mut at = e.source();
        while let Some(s) = at {
            out.push_str(": ");
            out.push_str(&s.to_string());
            at = s.source();
        }
        out
    }

    #[test]
    fn the_chain_names_the_operation_the_path_and_the_cause() {
        let dir = Path::new("/nonexistent-deskvm/checkpoints/foo");
        let e = std::fs::create_dir(dir)
            .at("creating checkpoint dir", dir)
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        let text = chain(&e);
        assert!(
            text.starts_with("creating checkpoint dir /nonexistent-deskvm/checkpoints/foo: "),
            "{text}"
        );
        assert!(text.contains("No such file or directory"), "{text}");
        // Through io::Error the context survives, once.
        let io: io::Error = e.into();
        let text = chain(&io);
        assert_eq!(text.matches("creating checkpoint dir").count(), 1, "{text}");
        assert!(text.contains("No such file or directory"), "{text}");
    }
}
