//! What of an agent's text the ledger may keep: nothing of a secret but its length, and of long
//! text a head, its length and its hash.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// Text longer than this is truncated in the ledger.
pub const MAX_TEXT_IN_LEDGER: usize = 512;

/// The ledger's form of `text`.
pub fn text(text: &str, secret: bool) -> Value {
    let length = text.chars().count();
    if secret {
        // No hash either: a hash of a short password is a dictionary lookup away from it.
        return json!({ "secret": true, "length": length });
    }
    if length <= MAX_TEXT_IN_LEDGER {
        return Value::String(text.to_string());
    }
    let head: String = text.chars().take(MAX_TEXT_IN_LEDGER).collect();
    json!({
        "truncated": true,
        "length": length,
        "sha256": crate::vm::spec::hex(&Sha256::digest(text.as_bytes())),
        "head": head,
    })
}

/// Raw tool arguments as a client sent them (for calls refused before they were parsed, e.g.
/// with a field of the wrong type): any string under a `secret: true` is reduced to its
/// length, and every long string is truncated.
pub fn raw_args(args: &Value) -> Value {
    scrub(args, has_secret(args))
}

/// Whether raw arguments mark a secret: `secret: true`, or anything else that was meant as
/// one ("true", 1).
pub fn has_secret(args: &Value) -> bool {
    args.get("secret")
        .is_some_and(|s| !matches!(s, Value::Bool(false) | Value::Null))
}

/// An outcome as the ledger keeps it: long strings (command output) truncated.
pub fn outcome(v: &Value) -> Value {
    scrub(v, false)
}

fn scrub(v: &Value, secret: bool) -> Value {
    match v {
        Value::String(s) => text(s, secret),
        Value::Array(a) => Value::Array(a.iter().map(|v| scrub(v, secret)).collect()),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    // A file's bytes (upload) never: their size is all the review keeps.
                    if k == "content" {
                        let n = v.as_str().map_or(0, str::len);
                        return (k.clone(), json!({ "omitted": true, "base64_chars": n }));
                    }
                    // Ids stay readable: they are not the agent's text.
                    let keep = k == "session_id" || k == "secret";
                    (k.clone(), if keep { v.clone() } else { scrub(v, secret) })
                })
                .collect(),
        ),
        // A number can be a PIN as well as any string can be a password.
        Value::Number(_) | Value::Bool(_) if secret => json!({ "secret": true }),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_truncated_with_length_and_hash() {
        let long = "x".repeat(MAX_TEXT_IN_LEDGER + 10);
        let v = text(&long, false);
        assert_eq!(v["length"], MAX_TEXT_IN_LEDGER + 10);
        assert_eq!(v["head"].as_str().unwrap().len(), MAX_TEXT_IN_LEDGER);
        assert_eq!(v["sha256"].as_str().unwrap().len(), 64);
    }

    #[test]
    fn raw_args_with_a_secret_keep_nothing_of_it() {
        let args =
            json!({ "session_id": 5, "text": "pa55word", "secret": true, "more": ["pa55word"] });
        let out = raw_args(&args).to_string();
        assert!(
            !out.contains("pa55word") && !out.contains("123456"),
            "{out}"
        );
        assert!(out.contains("\"session_id\":5"), "{out}");
        let args = json!({ "session_id": "a", "text": "hello", "secret": "yes" });
        assert!(!raw_args(&args).to_string().contains("hello"));
        let args = json!({ "session_id": "a", "text": "hello" });
        assert_eq!(raw_args(&args)["text"], "hello");
    }
}
