//! Exported review bundles as MCP resources (`deskvm://exports/<name>/<file>`), so a client on
//! another machine can read a bundle it cannot open as a server path.

use std::path::{Path, PathBuf};

use base64::Engine;
use rmcp::model::{Resource, ResourceContents};
use rmcp::ErrorData as McpError;

use crate::session::Caller;

pub const SCHEME: &str = "deskvm://exports/";

pub fn uri(name: &str, file: &str) -> String {
    format!("{SCHEME}{name}/{file}")
}

pub(crate) fn mime(file: &str) -> &'static str {
    match file.rsplit('.').next() {
        Some("html") => "text/html",
        Some("js") => "text/javascript",
        Some("css") => "text/css",
        Some("svg") => "image/svg+xml",
        Some("json") => "application/json",
        Some("jsonl") => "application/jsonl",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    }
}

/// A resource entry for one file of a bundle.
pub fn entry(exports: &Path, name: &str, file: &str, description: &str) -> Resource {
    let size = std::fs::metadata(exports.join(name).join(file))
        .map(|m| m.len())
        .ok();
    let mut r = Resource::new(uri(name, file), format!("{name}/{file}"))
        .with_mime_type(mime(file))
        .with_description(description);
    if let Some(s) = size {
        r = r.with_size(s);
    }
    r
}

/// The main files of every bundle in `exports` this caller may see (frames are reachable by
/// URI too).
pub fn list(exports: &Path, caller: &Caller) -> Vec<Resource> {
    let mut names: Vec<String> = std::fs::read_dir(exports)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| caller.sees_bundle(exports, &e.file_name().to_string_lossy()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    names
        .iter()
        .flat_map(|n| bundle_entries(exports, n))
        .collect()
}

pub fn bundle_entries(exports: &Path, name: &str) -> Vec<Resource> {
    vec![
        entry(
            exports,
            name,
            "index.html",
            "review viewer (open the bundle directory from file://)",
        ),
        entry(
            exports,
            name,
            &format!("{name}.html"),
            "review viewer as one file, pictures inlined",
        ),
        entry(exports, name, "review.json", "review manifest"),
        entry(
            exports,
            name,
            "timeline.jsonl",
            "review timeline, one event a line",
        ),
    ]
}

/// The file a `deskvm://exports/...` URI names, refusing anything outside the exports dir.
pub fn resolve(exports: &Path, uri: &str) -> Result<PathBuf, McpError> {
    let bad = || {
        McpError::invalid_params(
            format!("unknown resource {uri:?}: expected {SCHEME}<export name>/<file>, e.g. {SCHEME}<name>/index.html"),
            None,
        )
    };
    let rest = uri.strip_prefix(SCHEME).ok_or_else(bad)?;
    let parts: Vec<&str> = rest.split('/').collect();
    // Each part obeys the rule for export names: no separators, no "..", nothing hidden.
    let safe = |p: &&str| crate::session::check_name("path", p).is_ok();
    if !(2..=3).contains(&parts.len()) || !parts.iter().all(safe) {
        return Err(bad());
    }
    Ok(parts
        .iter()
        .fold(exports.to_path_buf(), |p, part| p.join(part)))
}

pub fn read(exports: &Path, uri: &str, caller: &Caller) -> Result<ResourceContents, McpError> {
    let path = resolve(exports, uri)?;
    let name = uri[SCHEME.len()..].split('/').next().unwrap_or_default();
    if !caller.sees_bundle(exports, name) {
        return Err(McpError::resource_not_found(
            format!("no such review: {uri}"),
            None,
        ));
    }
    let bytes = std::fs::read(&path)
        .map_err(|e| McpError::resource_not_found(format!("cannot read {uri}: {e}"), None))?;
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let m = mime(&file);
    Ok(if m.starts_with("image/") {
        ResourceContents::blob(base64::engine::general_purpose::STANDARD.encode(bytes), uri)
            .with_mime_type(m)
    } else {
        ResourceContents::text(String::from_utf8_lossy(&bytes), uri).with_mime_type(m)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_stay_inside_the_exports_dir() {
        let root = Path::new("/x/exports");
        assert_eq!(
            resolve(root, &uri("a", "index.html")).unwrap(),
            root.join("a/index.html")
        );
        assert_eq!(
            resolve(root, &uri("a", "shots/f.png")).unwrap(),
            root.join("a/shots/f.png")
        );
        for bad in [
            "deskvm://exports/../etc/passwd",
            "deskvm://exports/a/../../etc",
            "deskvm://exports/a",
            "file:///etc/passwd",
            "deskvm://exports/a//b",
            "deskvm://exports/.a.partial/index.html",
        ] {
            assert!(resolve(root, bad).is_err(), "{bad}");
        }
    }
}
