//! The server name a TLS client asks for, read from its ClientHello (RFC 8446 4.1.2, RFC 6066
//! section 3) before a tunnel is joined to its target: a tunnel to an allowed name must not
//! carry a TLS session for another one (fronting through a shared front end).
//!
//! Only what the check needs is read. Bytes that start like TLS but do not frame as a
//! ClientHello are `Malformed`, never guessed at: a server might read them differently.

/// The most of a tunnel's first bytes waited for: real ClientHellos are a few KiB at most.
pub(crate) const MAX_HELLO: usize = 16 * 1024;

const BAD: &str = "malformed TLS ClientHello";

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Hello {
    /// Not TLS: the first byte is not a handshake record of TLS (major version 3).
    NotTls,
    /// The start of a ClientHello; the rest is not here yet.
    Partial,
    /// A whole ClientHello, and the host name it asked for, if any.
    Sni(Option<String>),
    Malformed(&'static str),
}

/// Reads the ClientHello at the start of `buf`, joining the handshake records it spans.
pub(crate) fn client_hello_sni(buf: &[u8]) -> Hello {
    let mut hs: Vec<u8> = Vec::new();
    let mut rest = buf;
    while let Some(&kind) = rest.first() {
        if kind != 0x16 || rest.get(1).is_some_and(|&major| major != 3) {
            return if rest.len() == buf.len() {
                Hello::NotTls
            } else {
                Hello::Malformed("a TLS record inside the ClientHello is not a handshake")
            };
        }
        let (Some(&hi), Some(&lo)) = (rest.get(3), rest.get(4)) else {
            return Hello::Partial;
        };
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        if len == 0 || len > MAX_HELLO {
            return Hello::Malformed("bad TLS record length");
        }
        let Some(fragment) = rest.get(5..5 + len) else {
            return Hello::Partial;
        };
        hs.extend_from_slice(fragment);
        rest = &rest[5 + len..];
        if let &[msg, a, b, c, ..] = hs.as_slice() {
            if msg != 1 {
                return Hello::Malformed("the first TLS handshake message is not a ClientHello");
            }
            let need = 4 + ((usize::from(a) << 16) | (usize::from(b) << 8) | usize::from(c));
            if need > MAX_HELLO {
                return Hello::Malformed("TLS ClientHello over 16 KiB");
            }
            if hs.len() >= need {
                return match parse_hello(&hs[4..need]) {
                    Ok(sni) => Hello::Sni(sni),
                    Err(why) => Hello::Malformed(why),
                };
            }
        }
    }
    Hello::Partial
}

/// The ClientHello's body: version, random, session id, cipher suites, compression methods,
/// then the extensions, where `server_name` (type 0) is.
fn parse_hello(body: &[u8]) -> Result<Option<String>, &'static str> {
    let mut c = Cursor(body);
    c.take(2 + 32).ok_or(BAD)?;
    c.vec8().ok_or(BAD)?;
    c.vec16().ok_or(BAD)?;
    c.vec8().ok_or(BAD)?;
    if c.0.is_empty() {
        return Ok(None); // no extensions at all (TLS 1.2 allows it)
    }
    let mut exts = Cursor(c.vec16().ok_or(BAD)?);
    if !c.0.is_empty() {
        return Err(BAD);
    }
    let mut sni = None;
    let mut seen = false;
    while !exts.0.is_empty() {
        let kind = exts.u16().ok_or(BAD)?;
        let data = exts.vec16().ok_or(BAD)?;
        if kind == 0 {
            if seen {
                return Err("two server_name extensions");
            }
            seen = true;
            sni = server_name(data)?;
        }
    }
    Ok(sni)
}

/// A `ServerNameList`: its one `host_name` entry (type 0). Two would leave which one the
/// server uses to the server.
fn server_name(data: &[u8]) -> Result<Option<String>, &'static str> {
    let mut d = Cursor(data);
    let mut list = Cursor(d.vec16().ok_or(BAD)?);
    if !d.0.is_empty() {
        return Err(BAD);
    }
    let mut name = None;
    while !list.0.is_empty() {
        let kind = list.u8().ok_or(BAD)?;
        let value = list.vec16().ok_or(BAD)?;
        if kind == 0 {
            if name.is_some() {
                return Err("two host names in server_name");
            }
            let text = std::str::from_utf8(value).map_err(|_| "server_name is not text")?;
            name = Some(text.to_string());
        }
    }
    Ok(name)
}

/// The unread rest of a message; every read checks the length first.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }

    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

/// ClientHellos built by hand, for these tests and the proxy's.
#[cfg(test)]
pub(crate) mod build {
    fn be16(n: usize) -> [u8; 2] {
        u16::try_from(n).unwrap().to_be_bytes()
    }

    /// A ClientHello handshake message (no record header) asking for `names` as host names.
    pub(crate) fn handshake(names: &[&str]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend([7u8; 32]); // random
        body.push(32);
        body.extend([1u8; 32]); // session id
        body.extend([0, 4, 0x13, 0x01, 0x13, 0x02]); // two cipher suites
        body.extend([1, 0]); // compression: null
                             // supported_versions first, so the walk has to step over an extension.
        let mut exts = vec![0x00, 0x2b, 0, 3, 2, 0x03, 0x04];
        if !names.is_empty() {
            let mut list = Vec::new();
            for n in names {
                list.push(0);
                list.extend(be16(n.len()));
                list.extend(n.as_bytes());
            }
            exts.extend([0, 0]);
            exts.extend(be16(list.len() + 2));
            exts.extend(be16(list.len()));
            exts.extend(list);
        }
        body.extend(be16(exts.len()));
        body.extend(exts);
        let mut hs = vec![1];
        hs.extend(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
        hs.extend(body);
        hs
    }

    /// `fragment` as one handshake record.
    pub(crate) fn record(fragment: &[u8]) -> Vec<u8> {
        let mut r = vec![0x16, 3, 1];
        r.extend(be16(fragment.len()));
        r.extend(fragment);
        r
    }

    pub(crate) fn client_hello(name: Option<&str>) -> Vec<u8> {
        record(&handshake(name.as_slice()))
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;

    #[test]
    fn finds_the_host_name() {
        let hello = client_hello(Some("Example.com"));
        assert_eq!(
            client_hello_sni(&hello),
            Hello::Sni(Some("Example.com".into()))
        );
        assert_eq!(client_hello_sni(&client_hello(None)), Hello::Sni(None));
        // Bytes after the ClientHello (another record) do not matter.
        let mut more = hello.clone();
        more.extend([0x14, 3, 3, 0, 1, 1]);
        assert_eq!(
            client_hello_sni(&more),
            Hello::Sni(Some("Example.com".into()))
        );
    }

    #[test]
    fn waits_for_the_whole_hello() {
        let hello = client_hello(Some("a.test"));
        for n in 0..hello.len() {
            assert_eq!(client_hello_sni(&hello[..n]), Hello::Partial, "{n} bytes");
        }
    }

    #[test]
    fn joins_a_hello_split_over_records() {
        let hs = handshake(&["split.test"]);
        let mut two = record(&hs[..10]);
        two.extend(record(&hs[10..]));
        assert_eq!(
            client_hello_sni(&two),
            Hello::Sni(Some("split.test".into()))
        );
        assert_eq!(client_hello_sni(&two[..20]), Hello::Partial);
        // A non-handshake record in between is refused.
        let mut mixed = record(&hs[..10]);
        mixed.extend([0x17, 3, 3, 0, 1, 0]);
        assert!(matches!(client_hello_sni(&mixed), Hello::Malformed(_)));
    }

    #[test]
    fn other_protocols_are_not_tls() {
        assert_eq!(client_hello_sni(b"GET / HTTP/1.1\r\n"), Hello::NotTls);
        assert_eq!(client_hello_sni(b"SSH-2.0-OpenSSH_9.6\r\n"), Hello::NotTls);
        assert_eq!(client_hello_sni(&[0x16, 0x01, 0x00]), Hello::NotTls);
    }

    #[test]
    fn malformed_hellos_are_refused() {
        let mut hello = client_hello(Some("a.test"));
        // The cipher suites' length (after record and handshake headers, version, random and
        // session id) runs past the end.
        let at = 5 + 4 + 2 + 32 + 1 + 32;
        hello[at] = 0xff;
        assert_eq!(client_hello_sni(&hello), Hello::Malformed(BAD));
        let two = record(&handshake(&["a.test", "b.test"]));
        assert!(matches!(client_hello_sni(&two), Hello::Malformed(_)));
        let mut server_hello = handshake(&[]);
        server_hello[0] = 2;
        assert!(matches!(
            client_hello_sni(&record(&server_hello)),
            Hello::Malformed(_)
        ));
        assert!(matches!(
            client_hello_sni(&[0x16, 3, 1, 0, 0]),
            Hello::Malformed(_)
        ));
    }
}
