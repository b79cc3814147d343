//! Whether the proxy may reach a target, and at which addresses: the policy first, then the
//! operator's name map or DNS, then the rule that a name never leads to the host itself.
//!
//! The proxy runs on the host, so "loopback" here is the host's own services: a name the
//! guest may use (or that DNS points wherever it likes) must not become a path to them. Only
//! an address entry that allows such an address, or the operator's own `--resolve` map, can.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::TcpStream;

use super::head::Dest;
use super::policy::normalize_name;
use super::proxy::ProxyConfig;

/// Addresses tried per connection: a name with many is not a way to hold the guest's request
/// for many timeouts.
const MAX_TRIES: usize = 3;

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Allowed: connect to these, in order.
    Allow(Vec<SocketAddr>),
    /// Refused by the policy; the reason goes to the guest and the ledger.
    Deny(String),
    /// Allowed by name, but the name did not resolve.
    Unresolved(String),
}

pub(crate) async fn authorize(cfg: &ProxyConfig, dest: &Dest) -> Verdict {
    let (policy, port) = (&cfg.policy, dest.port);
    if let Ok(ip) = dest.host.parse::<IpAddr>() {
        // Whatever an entry says: the host's own services go through `forward`, which the
        // operator limits, never through the allowlist an agent writes.
        if is_internal(ip) {
            return Verdict::Deny(format!(
                "{ip} is this host's own or the guest network's address (use forward for host services)"
            ));
        }
        return if policy.allows_ip(ip, port) {
            Verdict::Allow(vec![SocketAddr::new(ip, port)])
        } else {
            Verdict::Deny(format!("no rule allows {dest}"))
        };
    }
    let Some(name) = normalize_name(&dest.host) else {
        return Verdict::Deny(format!("{:?} is not a valid host name", dest.host));
    };
    let by_name = policy.allows_name(&name, port);
    // A name no rule allows is never looked up: a guest-chosen name must not reach a DNS
    // server (a way out of its own). The operator's map is no lookup.
    if !by_name && !mapped_by_operator(cfg, &name) {
        return Verdict::Deny(format!("no rule allows {dest}"));
    }
    let (addrs, mapped) = match resolve(cfg, &name, port).await {
        Ok(found) => found,
        Err(why) if by_name => return Verdict::Unresolved(why),
        Err(why) => return Verdict::Deny(format!("no rule allows {dest} ({why})")),
    };
    let mut internal = false;
    let allowed: Vec<SocketAddr> = addrs
        .into_iter()
        .filter(|a| {
            // The host's own addresses only by an allowed name the operator mapped there.
            let inside = is_internal(a.ip()) && !(mapped && by_name);
            internal |= inside;
            !inside && (by_name || policy.allows_ip(a.ip(), port))
        })
        .collect();
    if !allowed.is_empty() {
        Verdict::Allow(allowed)
    } else if internal && by_name {
        Verdict::Deny(format!("{name} resolves to a loopback/link-local address"))
    } else {
        Verdict::Deny(format!("no rule allows {dest} or its addresses"))
    }
}

fn mapped_by_operator(cfg: &ProxyConfig, name: &str) -> bool {
    cfg.resolve
        .keys()
        .any(|k| k.strip_suffix('.').unwrap_or(k).eq_ignore_ascii_case(name))
}

/// The operator's map first (it is the operator's word, so its addresses may be anything),
/// then DNS, bounded by the connect timeout.
async fn resolve(
    cfg: &ProxyConfig,
    name: &str,
    port: u16,
) -> Result<(Vec<SocketAddr>, bool), String> {
    let mapped = cfg
        .resolve
        .iter()
        .find(|(k, _)| k.strip_suffix('.').unwrap_or(k).eq_ignore_ascii_case(name))
        .map(|(_, ip)| *ip);
    if let Some(ip) = mapped {
        return Ok((vec![SocketAddr::new(ip, port)], true));
    }
    match tokio::time::timeout(cfg.connect_timeout, tokio::net::lookup_host((name, port))).await {
        Ok(Ok(found)) => {
            let addrs: Vec<SocketAddr> = found.collect();
            if addrs.is_empty() {
                Err(format!("{name} has no addresses"))
            } else {
                Ok((addrs, false))
            }
        }
        Ok(Err(e)) => Err(format!("could not resolve {name}: {e}")),
        Err(_) => Err(format!(
            "resolving {name} took over {} ms",
            ms(cfg.connect_timeout)
        )),
    }
}

/// The host's own addresses and the guest network's, as seen from the host: loopback,
/// unspecified (`0.0.0.0/8`, `::`), link-local (`169.254/16`, `fe80::/10`) and QEMU's
/// user-mode network `10.0.2.0/24`.
pub(crate) fn is_internal(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v) => {
            let o = v.octets();
            v.is_loopback() || o[0] == 0 || v.is_link_local() || (o[0], o[1], o[2]) == (10, 0, 2)
        }
        IpAddr::V6(v) => {
            v.is_loopback() || v.is_unspecified() || (v.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

/// The first of `addrs` that answers within `limit`, or the last failure.
pub(crate) async fn connect(addrs: &[SocketAddr], limit: Duration) -> Result<TcpStream, String> {
    let mut last = String::from("no address to try");
    for &a in addrs.iter().take(MAX_TRIES) {
        match tokio::time::timeout(limit, TcpStream::connect(a)).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => last = format!("{a}: {e}"),
            Err(_) => last = format!("{a}: no answer within {} ms", ms(limit)),
        }
    }
    Err(last)
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses() {
        for a in [
            "127.0.0.1",
            "127.8.9.1",
            "0.0.0.0",
            "169.254.169.254",
            "10.0.2.2",
            "10.0.2.100",
            "::1",
            "::",
            "fe80::1",
            "febf::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_internal(a.parse().unwrap()), "{a}");
        }
        for a in [
            "10.0.3.1",
            "192.168.1.1",
            "8.8.8.8",
            "fec0::1",
            "2001:db8::1",
        ] {
            assert!(!is_internal(a.parse().unwrap()), "{a}");
        }
    }
}
