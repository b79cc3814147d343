//! Parameters of the ways in and out of a desktop: the network a session starts with, files
//! and the clipboard.

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::session::network::NetworkMode;

/// `network`: `"none"` (default), `"open"`, `{"allow": [...]}`, or the old boolean.
pub fn network_mode<'de, D: Deserializer<'de>>(d: D) -> Result<NetworkMode, D::Error> {
    let v = Value::deserialize(d)?;
    parse_network(&v).map_err(serde::de::Error::custom)
}

fn parse_network(v: &Value) -> Result<NetworkMode, String> {
    let valid = r#"valid: "none", "open", {"allow": ["example.com", "*.example.org", "203.0.113.0/24", "host:8080"]}, or true/false (open/none)"#;
    match v {
        Value::Null | Value::Bool(false) => Ok(NetworkMode::None),
        Value::Bool(true) => Ok(NetworkMode::Open),
        Value::String(s) if s == "none" => Ok(NetworkMode::None),
        Value::String(s) if s == "open" => Ok(NetworkMode::Open),
        Value::Object(m) if m.len() == 1 && m.contains_key("allow") => match &m["allow"] {
            Value::Array(items) => items
                .iter()
                .map(|i| {
                    i.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| format!("network.allow entries are strings; got {i}"))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(NetworkMode::Allow),
            other => Err(format!("network.allow is a list of strings; got {other}")),
        },
        other => Err(format!("network {other} is not a network mode; {valid}")),
    }
}

pub fn network_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "What the guest may reach. \"none\" (default): nothing. \"open\": NAT to anywhere, no policy. {\"allow\": [...]}: only these, through deskvm's proxy on the host (http_proxy and Firefox are set up for it): domains (`example.com`, `*.example.com` for its subdomains), addresses or CIDRs (`203.0.113.0/24`), each optionally `:PORT` or `:*` (default ports 80 and 443). Every proxy decision goes into the review. `true`/`false` mean open/none.",
        "oneOf": [
            { "type": "string", "enum": ["none", "open"] },
            { "type": "boolean" },
            {
                "type": "object",
                "properties": { "allow": { "type": "array", "items": { "type": "string" }, "maxItems": 256 } },
                "required": ["allow"],
                "additionalProperties": false
            }
        ]
    })
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct UploadArgs {
    pub session_id: String,
    /// Absolute path in the guest.
    pub path: String,
    /// The file's bytes, base64 (standard alphabet, padded). At most 10 MiB decoded.
    pub content: String,
    /// Permission bits, e.g. 420 (0644) or "0755" (default 0644).
    pub mode: Option<Value>,
    /// Create missing parent directories (default: refuse).
    #[serde(default)]
    pub create_dirs: bool,
    /// Replace an existing file (default: refuse).
    #[serde(default)]
    pub overwrite: bool,
    /// Owned by root instead of the desktop user.
    #[serde(default)]
    pub root: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct DownloadArgs {
    pub session_id: String,
    /// Absolute path of a regular file in the guest (at most 10 MiB).
    pub path: String,
}

/// Which X selection: `clipboard` (ctrl+c / ctrl+v, default) or `primary` (select /
/// middle-click).
#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Selection {
    #[default]
    Clipboard,
    Primary,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ClipboardSetArgs {
    pub session_id: String,
    /// The text (Unicode, exact; at most 1 MiB).
    pub text: String,
    #[serde(default)]
    pub selection: Selection,
    /// A password or other secret: kept out of the review (as in `type`).
    #[serde(default)]
    pub secret: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ClipboardGetArgs {
    pub session_id: String,
    #[serde(default)]
    pub selection: Selection,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn network_modes_and_the_old_boolean() {
        assert_eq!(parse_network(&json!(true)).unwrap(), NetworkMode::Open);
        assert_eq!(parse_network(&json!(false)).unwrap(), NetworkMode::None);
        assert_eq!(parse_network(&json!("none")).unwrap(), NetworkMode::None);
        assert_eq!(
            parse_network(&json!({"allow": ["a.test"]})).unwrap(),
            NetworkMode::Allow(vec!["a.test".into()])
        );
        let e = parse_network(&json!("sideways")).unwrap_err();
        assert!(e.contains("\"open\""), "{e}");
        assert!(parse_network(&json!({"allow": "a.test"})).is_err());
        assert!(parse_network(&json!({"allow": [], "deny": []})).is_err());
    }
}
