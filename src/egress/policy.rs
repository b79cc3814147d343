//! The allowlist of mode `allow`: which host names, addresses and ports the guest may reach
//! through the proxy. It is parsed once, at session start, and an entry that does not parse
//! refuses the session naming the entry: guessing would allow either less than the caller
//! meant or more.

use std::fmt;
use std::net::IpAddr;

/// At most this many entries: every request walks the list, and a person reads it in the ledger.
pub const MAX_ENTRIES: usize = 256;

const FORMS: &str = "example.com, *.example.com (subdomains only), 203.0.113.7, \
    203.0.113.0/24, 2001:db8::1, 2001:db8::/32, each optionally with :PORT or :* \
    (IPv6 with a port in brackets: [2001:db8::1]:443); without a port, 80 and 443";

const NOT_A_HOST: &str = "not a host name, IP address or CIDR block";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("network allow entry {entry:?}: {why}; valid forms: {}", FORMS)]
    Entry { entry: String, why: &'static str },
    #[error("network allow has {count} entries; at most {}", MAX_ENTRIES)]
    TooMany { count: usize },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// This name exactly.
    Name(String),
    /// Names under this suffix, never the suffix itself (`*.example.com`).
    Below(String),
    /// An address block, its host bits zero; a single address has the full prefix.
    Net { base: IpAddr, prefix: u8 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ports {
    /// No port written: the web's two.
    Web,
    One(u16),
    Any,
}

impl Ports {
    fn has(self, port: u16) -> bool {
        match self {
            Ports::Web => port == 80 || port == 443,
            Ports::One(p) => p == port,
            Ports::Any => true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    target: Target,
    ports: Ports,
}

/// A parsed allowlist. The empty one (also the default) allows nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    rules: Vec<Rule>,
}

impl Policy {
    pub fn parse(entries: &[String]) -> Result<Policy, PolicyError> {
        if entries.len() > MAX_ENTRIES {
            return Err(PolicyError::TooMany {
                count: entries.len(),
            });
        }
        let rules = entries
            .iter()
            .map(|e| {
                parse_rule(e).map_err(|why| PolicyError::Entry {
                    entry: e.clone(),
                    why,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Policy { rules })
    }

    /// Whether a name entry allows `name` on `port`. An IP literal is asked of the address
    /// entries instead; a string that is not a valid host name is allowed by nothing.
    pub fn allows_name(&self, name: &str, port: u16) -> bool {
        if let Ok(ip) = name.parse::<IpAddr>() {
            return self.allows_ip(ip, port);
        }
        let Some(name) = normalize_name(name) else {
            return false;
        };
        self.rules.iter().any(|r| {
            r.ports.has(port)
                && match &r.target {
                    Target::Name(n) => *n == name,
                    Target::Below(suffix) => is_below(&name, suffix),
                    Target::Net { .. } => false,
                }
        })
    }

    /// Whether an address or CIDR entry allows `ip` on `port`. An IPv4-mapped IPv6 address is
    /// asked as the IPv4 address it reaches.
    pub fn allows_ip(&self, ip: IpAddr, port: u16) -> bool {
        let ip = ip.to_canonical();
        self.rules.iter().any(|r| {
            r.ports.has(port)
                && matches!(r.target, Target::Net { base, prefix } if in_block(ip, base, prefix))
        })
    }

    /// Whether any entry is an address or block: only then is a name worth resolving to see
    /// whether its addresses are allowed.
    pub fn has_addresses(&self) -> bool {
        self.rules
            .iter()
            .any(|r| matches!(r.target, Target::Net { .. }))
    }

    /// The entries in normal form (lowercase, no trailing dot, blocks with their host bits
    /// cleared), for the ledger and the session's result. Each parses back to the same rule.
    pub fn entries(&self) -> Vec<String> {
        self.rules.iter().map(Rule::to_string).collect()
    }
}

/// A host name in normal form (lowercase, one trailing dot dropped), or `None` when it is not
/// one: labels of ASCII letters, digits and hyphens, 1..=63 long, 253 in all. A name whose last
/// label is a number (`127.1`, `0x7f.1`) is refused too: resolvers read those as addresses.
pub fn normalize_name(name: &str) -> Option<String> {
    let n = name.strip_suffix('.').unwrap_or(name);
    if n.is_empty() || n.len() > 253 {
        return None;
    }
    let mut last = "";
    for label in n.split('.') {
        let ok = (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !ok {
            return None;
        }
        last = label;
    }
    let hex = last
        .strip_prefix("0x")
        .or_else(|| last.strip_prefix("0X"))
        .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
    if hex || last.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(n.to_ascii_lowercase())
}

fn parse_rule(entry: &str) -> Result<Rule, &'static str> {
    let s = entry.trim();
    if s.is_empty() {
        return Err("empty entry");
    }
    let (host, port) = split_port(s)?;
    let ports = match port {
        None => Ports::Web,
        Some("*") => Ports::Any,
        Some(p) => Ports::One(parse_port(p).ok_or("the port must be 1-65535 or *")?),
    };
    Ok(Rule {
        target: parse_target(host)?,
        ports,
    })
}

/// Splits off `:PORT`. An IPv6 address has colons of its own, so it takes a port only inside
/// brackets; unbracketed, two colons or more mean an IPv6 address without a port.
fn split_port(s: &str) -> Result<(&str, Option<&str>), &'static str> {
    if let Some(rest) = s.strip_prefix('[') {
        let (inner, after) = rest.split_once(']').ok_or("[ without ]")?;
        if !inner.contains(':') {
            return Err("brackets hold an IPv6 address");
        }
        if after.is_empty() {
            return Ok((inner, None));
        }
        let port = after.strip_prefix(':').ok_or("only :PORT may follow ]")?;
        return Ok((inner, Some(port)));
    }
    match s.split_once(':') {
        Some((host, port)) if !port.contains(':') => Ok((host, Some(port))),
        _ => Ok((s, None)),
    }
}

/// 1..=65535 in plain digits (`u16::from_str` alone would take `+80`).
fn parse_port(p: &str) -> Option<u16> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse::<u16>().ok().filter(|&n| n != 0)
}

fn parse_target(h: &str) -> Result<Target, &'static str> {
    if h.is_empty() {
        return Err("no host before the port");
    }
    if let Some((addr, len)) = h.split_once('/') {
        let base: IpAddr = addr
            .parse()
            .map_err(|_| "a CIDR block needs an IP address before /")?;
        let max = full_prefix(base);
        let prefix = parse_prefix(len)
            .filter(|&p| p <= max)
            .ok_or("the CIDR prefix must be 0-32 for IPv4, 0-128 for IPv6")?;
        return Ok(Target::Net {
            base: clear_host_bits(base, prefix),
            prefix,
        });
    }
    if let Ok(ip) = h.parse::<IpAddr>() {
        return Ok(Target::Net {
            base: ip,
            prefix: full_prefix(ip),
        });
    }
    if let Some(suffix) = h.strip_prefix("*.") {
        return normalize_name(suffix).map(Target::Below).ok_or(NOT_A_HOST);
    }
    if h.contains('*') {
        return Err("* only as the whole first label (*.example.com)");
    }
    normalize_name(h).map(Target::Name).ok_or(NOT_A_HOST)
}

fn parse_prefix(s: &str) -> Option<u8> {
    if s.is_empty() || s.len() > 3 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn full_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

/// `name` is strictly below `suffix`: `a.example.com` is below `example.com`, while
/// `example.com` and `badexample.com` are not.
fn is_below(name: &str, suffix: &str) -> bool {
    name.strip_suffix(suffix)
        .is_some_and(|head| head.len() > 1 && head.ends_with('.'))
}

fn mask32(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => u32::MAX << (32 - u32::from(p.min(32))),
    }
}

fn mask128(prefix: u8) -> u128 {
    match prefix {
        0 => 0,
        p => u128::MAX << (128 - u32::from(p.min(128))),
    }
}

fn in_block(ip: IpAddr, base: IpAddr, prefix: u8) -> bool {
    match (ip, base) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let m = mask32(prefix);
            u32::from(a) & m == u32::from(b) & m
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let m = mask128(prefix);
            u128::from(a) & m == u128::from(b) & m
        }
        _ => false,
    }
}

fn clear_host_bits(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => IpAddr::from((u32::from(a) & mask32(prefix)).to_be_bytes()),
        IpAddr::V6(a) => IpAddr::from((u128::from(a) & mask128(prefix)).to_be_bytes()),
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = match &self.target {
            Target::Name(n) => n.clone(),
            Target::Below(s) => format!("*.{s}"),
            Target::Net { base, prefix } if *prefix == full_prefix(*base) => base.to_string(),
            Target::Net { base, prefix } => format!("{base}/{prefix}"),
        };
        let v6 = matches!(
            self.target,
            Target::Net {
                base: IpAddr::V6(_),
                ..
            }
        );
        match (self.ports, v6) {
            (Ports::Web, _) => f.write_str(&host),
            (Ports::One(p), true) => write!(f, "[{host}]:{p}"),
            (Ports::One(p), false) => write!(f, "{host}:{p}"),
            (Ports::Any, true) => write!(f, "[{host}]:*"),
            (Ports::Any, false) => write!(f, "{host}:*"),
        }
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
