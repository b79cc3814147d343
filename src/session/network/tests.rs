//! Unit tests of the network rules (pure: no guest).

use super::*;

fn cfg(ports: &str) -> NetConfig {
    NetConfig {
        allow_forward: PortSet::parse(ports).unwrap(),
        ..Default::default()
    }
}

#[test]
fn port_sets_parse_and_print() {
    let p = PortSet::parse("3000, 8000-8100").unwrap();
    assert!(p.contains(3000) && p.contains(8050) && !p.contains(3001));
    assert_eq!(p.to_string(), "3000,8000-8100");
    assert_eq!(PortSet::default().to_string(), "none");
    assert!(PortSet::parse("0").is_err());
    assert!(PortSet::parse("9-1").unwrap_err().contains("backwards"));
    assert!(PortSet::parse("http").unwrap_err().contains("not a port"));
}

#[test]
fn forwards_are_loopback_and_allowed_ports_only() {
    let c = cfg("3000,5000-5001");
    let ok = NetRequest::check(
        NetworkMode::None,
        &[
            "127.0.0.1:3000".into(),
            "localhost:5001".into(),
            "[::1]:5000".into(),
        ],
        &c,
        None,
    )
    .unwrap();
    assert_eq!(ok.forwards.len(), 3);
    assert!(ok.needs_guest());
    let kind = |e: SessionError| (e.kind(), e.to_string());
    let (k, m) = kind(
        NetRequest::check(NetworkMode::None, &["127.0.0.1:3001".into()], &c, None).unwrap_err(),
    );
    assert_eq!(k, "forward_refused");
    assert!(m.contains("3000,5000-5001"), "{m}");
    let (_, m) = kind(
        NetRequest::check(NetworkMode::None, &["192.0.2.1:3000".into()], &c, None).unwrap_err(),
    );
    assert!(m.contains("loopback"), "{m}");
    let (_, m) = kind(
        NetRequest::check(
            NetworkMode::None,
            &["3000".into(), "localhost:3000".into()],
            &c,
            None,
        )
        .unwrap_err(),
    );
    assert!(m.contains("twice"), "{m}");
    let none = NetRequest::check(
        NetworkMode::None,
        &["3000".into()],
        &NetConfig::default(),
        None,
    );
    assert!(none.unwrap_err().to_string().contains("none"));
}

#[test]
fn a_token_forwards_within_its_own_ports() {
    let mut c = cfg("3000-3010");
    c.token_forward
        .insert("ci".into(), PortSet::parse("3005").unwrap());
    assert!(NetRequest::check(NetworkMode::None, &["3005".into()], &c, Some("ci")).is_ok());
    let e = NetRequest::check(NetworkMode::None, &["3001".into()], &c, Some("ci")).unwrap_err();
    assert!(e.to_string().contains("this token's ports: 3005"), "{e}");
    assert!(NetRequest::check(NetworkMode::None, &["3001".into()], &c, Some("other")).is_ok());
}

#[test]
fn allow_entries_are_checked_and_described() {
    let c = NetConfig::default();
    let bad = NetRequest::check(
        NetworkMode::Allow(vec!["bad domain!".into()]),
        &[],
        &c,
        None,
    );
    assert_eq!(bad.unwrap_err().kind(), "invalid_params");
    let r = NetRequest::check(
        NetworkMode::Allow(vec!["example.com".into()]),
        &[],
        &c,
        None,
    )
    .unwrap();
    let d = r.describe();
    assert_eq!(d["mode"], "allow");
    assert_eq!(d["proxy"], "http://proxy.deskvm.internal:3128");
    let script = r.guest_script();
    assert!(
        script.contains("http_proxy=http://proxy.deskvm.internal:3128"),
        "{script}"
    );
    assert!(
        !script.contains("nameserver"),
        "no DNS but the proxy's: {script}"
    );
    let open = NetRequest::check(NetworkMode::Open, &[], &c, None).unwrap();
    assert!(open.guest_script().contains("nameserver 10.0.2.3"));
}

#[test]
fn modes_the_operator_does_not_offer_are_refused() {
    let c = NetConfig {
        modes: vec!["none".into(), "allow".into()],
        ..Default::default()
    };
    let e = NetRequest::check(NetworkMode::Open, &[], &c, None).unwrap_err();
    assert_eq!(e.kind(), "unavailable");
    assert!(e.to_string().contains("offers: none, allow"), "{e}");
    assert!(NetRequest::check(NetworkMode::None, &[], &c, None).is_ok());
}
