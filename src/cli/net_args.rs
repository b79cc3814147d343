//! `deskvm serve`'s network flags: which host ports sessions may forward, the proxy's name
//! map, and whether reviews keep the files that went in and out.

use std::collections::HashMap;
use std::net::IpAddr;

use anyhow::{bail, Context, Result};

use crate::http::Tokens;
use crate::session::network::{NetConfig, PortSet};

#[derive(clap::Args, Debug, Clone, Default)]
pub struct NetArgs {
    /// Host loopback ports sessions may forward into their guest (session_start `forward`),
    /// e.g. `3000,8000-8100`. Default: none. A token line's `forward=PORTS` narrows it.
    #[arg(
        long = "allow-forward",
        env = "DESKVM_ALLOW_FORWARD",
        default_value = ""
    )]
    pub allow_forward: String,
    /// `NAME=IP`: the allowlist proxy resolves NAME to IP instead of asking DNS (repeatable;
    /// DESKVM_RESOLVE takes `;`-separated pairs). For split-horizon names, and for tests.
    #[arg(long = "resolve", env = "DESKVM_RESOLVE", value_delimiter = ';')]
    pub resolve: Vec<String>,
    /// Keep a copy of every uploaded and downloaded file in the session's review, where a
    /// person can fetch it (default: the review records path, size and sha256 only).
    #[arg(long = "review-files", env = "DESKVM_REVIEW_FILES")]
    pub review_files: bool,
    /// The network modes sessions may ask for: none, allow, open (comma-separated). `none`
    /// is always offered.
    #[arg(
        long = "network-modes",
        env = "DESKVM_NETWORK_MODES",
        value_delimiter = ',',
        default_value = "none,allow,open"
    )]
    pub network_modes: Vec<String>,
}

impl NetArgs {
    /// The checked rules; `tokens`: the HTTP server's, whose `forward=` must fit inside
    /// `--allow-forward`.
    pub fn config(&self, tokens: Option<&Tokens>) -> Result<NetConfig> {
        let allow_forward = PortSet::parse(&self.allow_forward)
            .map_err(anyhow::Error::msg)
            .context("--allow-forward")?;
        let mut token_forward = HashMap::new();
        for (name, ports) in tokens.map(Tokens::forward_rules).unwrap_or_default() {
            let set = PortSet::parse(ports)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("token {name:?}: forward="))?;
            token_forward.insert(name.clone(), set);
        }
        let mut resolve = HashMap::new();
        for pair in self.resolve.iter().filter(|p| !p.trim().is_empty()) {
            let Some((name, ip)) = pair.split_once('=') else {
                bail!("--resolve {pair:?}: expected NAME=IP, e.g. intranet.example=10.1.2.3");
            };
            let ip: IpAddr = ip
                .trim()
                .parse()
                .with_context(|| format!("--resolve {pair:?}: {ip:?} is not an IP address"))?;
            resolve.insert(name.trim().trim_end_matches('.').to_ascii_lowercase(), ip);
        }
        let mut modes = vec!["none".to_string()];
        for m in &self.network_modes {
            let m = m.trim();
            if !["none", "allow", "open"].contains(&m) {
                bail!("--network-modes {m:?}: the modes are none, allow and open");
            }
            if !modes.iter().any(|k| k == m) {
                modes.push(m.to_string());
            }
        }
        Ok(NetConfig {
            modes,
            allow_forward,
            token_forward,
            resolve,
            review_files: self.review_files,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_become_rules_and_bad_ones_say_why() {
        let a = NetArgs {
            allow_forward: "3000,8000-8001".into(),
            resolve: vec!["Allowed.Test.=127.0.0.1".into()],
            review_files: true,
            network_modes: vec!["allow".into()],
        };
        let c = a.config(None).unwrap();
        assert!(c.allow_forward.contains(8001));
        assert_eq!(c.resolve["allowed.test"].to_string(), "127.0.0.1");
        assert_eq!(c.modes, ["none", "allow"]);
        let bad = NetArgs {
            resolve: vec!["x".into()],
            ..Default::default()
        };
        assert!(format!("{:#}", bad.config(None).unwrap_err()).contains("NAME=IP"));
        let bad = NetArgs {
            allow_forward: "web".into(),
            ..Default::default()
        };
        assert!(format!("{:#}", bad.config(None).unwrap_err()).contains("--allow-forward"));
    }
}
