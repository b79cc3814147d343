//! The bearer tokens a server accepts: named, loaded from a file (and `DESKVM_TOKEN`), kept only
//! as SHA-256 digests and compared in constant time.

use std::path::Path;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// Configured tokens: names and the SHA-256 of each secret (the secrets are not kept), and
/// each token's own forward ports (`forward=PORTS` after the secret).
#[derive(Debug, Clone, Default)]
pub struct Tokens(Vec<(String, [u8; 32])>, Vec<(String, String)>);

const MIN_TOKEN_LEN: usize = 16;

impl Tokens {
    /// `file`: one token per line, `name:secret` or just `secret` (named "default"), then
    /// optionally ` forward=3000,8000-8100` (the host ports its sessions may forward, within
    /// the server's --allow-forward); blank lines and `#` comments are skipped. `env`: one
    /// more secret, named "env".
    pub fn load(file: Option<&Path>, env: Option<&str>) -> Result<Self> {
        let mut tokens = Vec::new();
        let mut forward = Vec::new();
        if let Some(f) = file {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("reading the token file {}", f.display()))?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let (name, rest) = line.split_once(':').unwrap_or(("default", line));
                let mut words = rest.split_whitespace();
                let secret = words.next().unwrap_or_default();
                for option in words {
                    match option.split_once('=') {
                        Some(("forward", ports)) => {
                            forward.push((name.trim().to_string(), ports.to_string()))
                        }
                        _ => bail!(
                            "token {:?} (line {}): unknown option {option:?}; valid: forward=PORTS",
                            name.trim(),
                            n + 1
                        ),
                    }
                }
                tokens.push((name.trim().to_string(), secret.to_string(), n + 1));
            }
        }
        if let Some(secret) = env.filter(|s| !s.is_empty()) {
            tokens.push(("env".into(), secret.to_string(), 0));
        }
        let mut out = Vec::new();
        for (name, secret, line) in tokens {
            if secret.len() < MIN_TOKEN_LEN {
                bail!("token {name:?} (line {line}) is shorter than {MIN_TOKEN_LEN} characters; use e.g. `openssl rand -hex 32`");
            }
            if out.iter().any(|(n, _)| n == &name) {
                bail!("token name {name:?} appears twice in the token file");
            }
            out.push((name, Sha256::digest(secret.as_bytes()).into()));
        }
        Ok(Tokens(out, forward))
    }

    /// Each token's `forward=` ports as written: (token name, ports).
    pub fn forward_rules(&self) -> &[(String, String)] {
        &self.1
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The name of the token `secret` is, comparing against every token in constant time
    /// (digests of equal length, no early exit).
    pub fn check(&self, secret: &str) -> Option<String> {
        let presented: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let mut found = None;
        for (name, digest) in &self.0 {
            let diff = digest
                .iter()
                .zip(presented.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 {
                found = Some(name.clone());
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_by_digest_and_are_named() {
        let dir = std::env::temp_dir().join(format!("deskvm-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("tokens");
        std::fs::write(
            &f,
            "# team\nalice: aaaaaaaaaaaaaaaaaaaa\nbob:bbbbbbbbbbbbbbbbbbbb\n",
        )
        .unwrap();
        let t = Tokens::load(Some(&f), Some("cccccccccccccccccccc")).unwrap();
        assert_eq!(t.check("aaaaaaaaaaaaaaaaaaaa").as_deref(), Some("alice"));
        assert_eq!(t.check("cccccccccccccccccccc").as_deref(), Some("env"));
        assert_eq!(t.check("aaaaaaaaaaaaaaaaaaab"), None);
        std::fs::write(&f, "short").unwrap();
        assert!(Tokens::load(Some(&f), None).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
