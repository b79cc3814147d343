use super::*;

fn head(text: &str) -> Head {
    parse(text.as_bytes()).unwrap()
}

fn dest(host: &str, port: u16) -> Dest {
    Dest {
        host: host.into(),
        port,
    }
}

#[tokio::test]
async fn reads_up_to_the_blank_line_and_keeps_the_rest() {
    let mut input: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nBODY";
    let (h, rest) = read_head(&mut input).await.unwrap();
    assert_eq!(h, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(rest, b"BODY");
    let mut closed: &[u8] = b"GET / HTTP/1.1\r\n";
    assert!(matches!(
        read_head(&mut closed).await,
        Err(ReadError::Closed)
    ));
    let long = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
    let mut long = long.as_bytes();
    assert!(matches!(
        read_head(&mut long).await,
        Err(ReadError::TooLong)
    ));
}

#[test]
fn absolute_form_and_its_host_header() {
    let h = head("GET http://Example.COM./a?b=1#frag HTTP/1.1\r\nHost: example.com\r\n\r\n");
    assert_eq!(
        target(&h),
        Ok(Target::Plain(dest("example.com", 80), "/a?b=1".into()))
    );
    let h = head("POST http://example.com:8080?q HTTP/1.0\r\n\r\n");
    assert_eq!(
        target(&h),
        Ok(Target::Plain(dest("example.com", 8080), "/?q".into()))
    );
    let h = head("GET http://[2001:db8::1]:81 HTTP/1.1\r\nHost: [2001:db8:0::1]:81\r\n\r\n");
    assert_eq!(
        target(&h),
        Ok(Target::Plain(dest("2001:db8::1", 81), "/".into()))
    );
    for other in ["other.test", "example.com:81", ""] {
        let h = head(&format!(
            "GET http://example.com/ HTTP/1.1\r\nHost: {other}\r\n\r\n"
        ));
        assert_eq!(
            target(&h),
            Err(Bad::Mismatch(dest("example.com", 80))),
            "{other:?}"
        );
    }
}

#[test]
fn origin_form_and_connect() {
    let h = head("GET /x HTTP/1.1\r\nhost: Example.com:8000\r\n\r\n");
    assert_eq!(
        target(&h),
        Ok(Target::Plain(dest("example.com", 8000), "/x".into()))
    );
    let h = head("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n");
    assert_eq!(target(&h), Ok(Target::Tunnel(dest("example.com", 443))));
    let h = head("CONNECT [::1]:22 HTTP/1.1\r\n\r\n");
    assert_eq!(target(&h), Ok(Target::Tunnel(dest("::1", 22))));
}

#[test]
fn unreadable_targets_are_malformed() {
    for text in [
        "CONNECT example.com HTTP/1.1\r\n\r\n",
        "CONNECT example.com:0 HTTP/1.1\r\n\r\n",
        "CONNECT ::1:22 HTTP/1.1\r\n\r\n",
        "GET https://example.com/ HTTP/1.1\r\n\r\n",
        "GET /x HTTP/1.1\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
        "GET http://user@example.com/ HTTP/1.1\r\n\r\n",
        "GET ftp://example.com/ HTTP/1.1\r\n\r\n",
        "OPTIONS * HTTP/1.1\r\nHost: a.test\r\n\r\n",
    ] {
        assert!(
            matches!(target(&head(text)), Err(Bad::Malformed(_))),
            "{text:?}"
        );
    }
}

#[test]
fn strict_parsing() {
    for text in [
        "GET / HTTP/1.1\r\n\r\n\r\n",
        "GET  / HTTP/1.1\r\n\r\n",
        "GET / HTTP/2\r\n\r\n",
        "G(T / HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\nX-Smuggled: b\r\n\r\n",
        "GET / HTTP/1.1\r\nNoColon\r\n\r\n",
    ] {
        assert!(parse(text.as_bytes()).is_err(), "{text:?}");
    }
    let h = head("GET / HTTP/1.1\r\nA:  spaced\t\r\nB:\r\n\r\n");
    assert_eq!(h.values("a"), vec!["spaced"]);
    assert_eq!(h.values("B"), vec![""]);
}

#[test]
fn the_target_gets_origin_form_and_connection_close() {
    let h = head(
        "GET http://example.com:8080/p HTTP/1.1\r\nProxy-Connection: keep-alive\r\n\
         Proxy-Authorization: Basic eDp5\r\nConnection: keep-alive\r\nKeep-Alive: 5\r\n\
         Accept: */*\r\n\r\n",
    );
    let out = origin_head(&h, &dest("example.com", 8080), "/p");
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "GET /p HTTP/1.1\r\nHost: example.com:8080\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    let h = head("GET http://[::1]/ HTTP/1.1\r\nHost: [::1]\r\n\r\n");
    let out = origin_head(&h, &dest("::1", 80), "/");
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "GET / HTTP/1.1\r\nHost: [::1]\r\nConnection: close\r\n\r\n"
    );
    let h = head("GET http://[::1]/ HTTP/1.0\r\n\r\n");
    let out = origin_head(&h, &dest("::1", 80), "/");
    assert!(String::from_utf8(out)
        .unwrap()
        .starts_with("GET / HTTP/1.0\r\nHost: [::1]\r\n"));
}
