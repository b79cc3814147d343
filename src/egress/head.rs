//! The request head a guest program sends the proxy: read (bounded), parsed strictly, its
//! target found, and a plain request rewritten for the target. Anything ambiguous is refused
//! rather than read one way here and another way by the target: a bare CR or LF, a folded
//! header, two `Host` headers, user info in the URL.

use tokio::io::{AsyncRead, AsyncReadExt};

/// The longest request head read; a longer one is refused with 431.
pub(crate) const MAX_HEAD: usize = 16 * 1024;

#[derive(Debug)]
pub(crate) enum ReadError {
    TooLong,
    Closed,
    Io(std::io::Error),
}

/// Reads up to the blank line that ends the head. Returns the head (the blank line included)
/// and whatever the client already sent after it.
pub(crate) async fn read_head<S>(s: &mut S) -> Result<(Vec<u8>, Vec<u8>), ReadError>
where
    S: AsyncRead + Unpin,
{
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let from = buf.len().saturating_sub(3);
        let n = s.read(&mut chunk).await.map_err(ReadError::Io)?;
        if n == 0 {
            return Err(ReadError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            let end = from + i + 4;
            if end > MAX_HEAD {
                return Err(ReadError::TooLong);
            }
            let rest = buf.split_off(end);
            return Ok((buf, rest));
        }
        if buf.len() >= MAX_HEAD {
            return Err(ReadError::TooLong);
        }
    }
}

#[derive(Debug)]
pub(crate) struct Head {
    pub(crate) method: String,
    pub(crate) target: String,
    pub(crate) version: String,
    pub(crate) headers: Vec<(String, String)>,
}

impl Head {
    /// The values of the headers called `name` (any case).
    pub(crate) fn values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// An RFC 9110 token character (methods and header names).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

pub(crate) fn parse(raw: &[u8]) -> Result<Head, &'static str> {
    let text = std::str::from_utf8(raw).map_err(|_| "the request head is not UTF-8")?;
    let text = text
        .strip_suffix("\r\n\r\n")
        .ok_or("the request head does not end in a blank line")?;
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let parts: Vec<&str> = line.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return Err("malformed request line");
    };
    if method.is_empty() || !method.bytes().all(is_tchar) {
        return Err("malformed method");
    }
    if target.is_empty() || target.bytes().any(|b| b.is_ascii_control()) {
        return Err("malformed request target");
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err("not an HTTP/1.x request");
    }
    let mut headers = Vec::new();
    for l in lines {
        let (name, value) = l.split_once(':').ok_or("malformed header line")?;
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return Err("malformed header name");
        }
        if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
            return Err("control character in a header value");
        }
        let value = value.trim_matches(|c| c == ' ' || c == '\t');
        headers.push((name.to_string(), value.to_string()));
    }
    Ok(Head {
        method: method.to_string(),
        target: target.to_string(),
        version: version.to_string(),
        headers,
    })
}

/// Where a request goes: a host in normal form (lowercase, no trailing dot; an address as
/// `IpAddr` prints it, IPv6 without brackets) and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Dest {
    pub(crate) host: String,
    pub(crate) port: u16,
}

impl std::fmt::Display for Dest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Target {
    Tunnel(Dest),
    /// A plain request and its path (origin-form, `/` at least).
    Plain(Dest, String),
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Bad {
    /// 400: no target can be read.
    Malformed(&'static str),
    /// 403: the Host header names another target than the URL.
    Mismatch(Dest),
}

pub(crate) fn target(head: &Head) -> Result<Target, Bad> {
    let hosts = head.values("host");
    if hosts.len() > 1 {
        return Err(Bad::Malformed("more than one Host header"));
    }
    if head.method == "CONNECT" {
        return authority(&head.target, None)
            .map(Target::Tunnel)
            .map_err(Bad::Malformed);
    }
    let t = head.target.as_str();
    if let Some(rest) = strip_prefix_ci(t, "http://") {
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (auth, tail) = rest.split_at(end);
        if auth.contains('@') {
            return Err(Bad::Malformed("user info in the request target"));
        }
        let dest = authority(auth, Some(80)).map_err(Bad::Malformed)?;
        if let Some(h) = hosts.first() {
            if authority(h, Some(80)).as_ref() != Ok(&dest) {
                return Err(Bad::Mismatch(dest));
            }
        }
        let tail = tail.split('#').next().unwrap_or_default();
        let path = if tail.starts_with('/') {
            tail.to_string()
        } else {
            format!("/{tail}")
        };
        return Ok(Target::Plain(dest, path));
    }
    if strip_prefix_ci(t, "https://").is_some() {
        return Err(Bad::Malformed(
            "https:// in a proxy request; TLS goes through CONNECT",
        ));
    }
    if t.starts_with('/') {
        let h = hosts.first().ok_or(Bad::Malformed("no Host header"))?;
        let dest = authority(h, Some(80)).map_err(Bad::Malformed)?;
        return Ok(Target::Plain(dest, t.to_string()));
    }
    Err(Bad::Malformed(
        "the request target is neither http://... nor a path",
    ))
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// `host[:port]` or `[v6][:port]` in normal form; `default` when no port is written.
pub(crate) fn authority(s: &str, default: Option<u16>) -> Result<Dest, &'static str> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (inner, after) = rest.split_once(']').ok_or("[ without ] in the host")?;
        let ip: std::net::Ipv6Addr = inner.parse().map_err(|_| "bad IPv6 address")?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or("only :PORT may follow ]")?),
        };
        (ip.to_string(), port)
    } else {
        let (h, port) = match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        };
        let host = match h.parse::<std::net::IpAddr>() {
            Ok(ip) => ip.to_string(),
            Err(_) => h.strip_suffix('.').unwrap_or(h).to_ascii_lowercase(),
        };
        (host, port)
    };
    if host.is_empty() {
        return Err("no host in the target");
    }
    let port = match port {
        None => default.ok_or("the target has no port")?,
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => p
            .parse::<u16>()
            .ok()
            .filter(|&n| n != 0)
            .ok_or("bad port")?,
        Some(_) => return Err("bad port"),
    };
    Ok(Dest { host, port })
}

/// The head for the target: origin-form, the proxy's own headers and the connection's
/// hop-by-hop ones dropped, `Connection: close`: one request per connection, so each one
/// passed the policy.
pub(crate) fn origin_head(head: &Head, dest: &Dest, path: &str) -> Vec<u8> {
    let mut out = format!("{} {} {}\r\n", head.method, path, head.version);
    if head.values("host").is_empty() {
        if dest.port == 80 {
            out.push_str(&format!("Host: {}\r\n", bracketed(&dest.host)));
        } else {
            out.push_str(&format!("Host: {dest}\r\n"));
        }
    }
    for (name, value) in &head.headers {
        let hop = [
            "connection",
            "proxy-connection",
            "proxy-authorization",
            "keep-alive",
        ]
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h));
        if !hop {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    out.into_bytes()
}

fn bracketed(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

#[cfg(test)]
#[path = "head_tests.rs"]
mod tests;
