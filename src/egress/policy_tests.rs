use super::*;

fn policy(entries: &[&str]) -> Policy {
    let entries: Vec<String> = entries.iter().map(|e| e.to_string()).collect();
    Policy::parse(&entries).unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn error(entry: &str) -> String {
    Policy::parse(&[entry.to_string()]).unwrap_err().to_string()
}

#[test]
fn exact_names_ignore_case_and_a_trailing_dot() {
    let p = policy(&["Example.COM."]);
    assert!(p.allows_name("example.com", 443));
    assert!(p.allows_name("EXAMPLE.com.", 80));
    assert!(!p.allows_name("www.example.com", 443));
    assert!(!p.allows_name("example.org", 443));
    assert_eq!(p.entries(), vec!["example.com"]);
}

#[test]
fn wildcards_cover_subdomains_only() {
    let p = policy(&["*.example.com"]);
    assert!(p.allows_name("a.example.com", 443));
    assert!(p.allows_name("a.b.example.com", 80));
    assert!(!p.allows_name("example.com", 443));
    assert!(!p.allows_name("badexample.com", 443));
    assert!(!p.allows_name("a.badexample.com", 443));
    assert!(!p.allows_name(".example.com", 443));
}

#[test]
fn ports_default_to_web_and_can_be_one_or_any() {
    let p = policy(&["web.test", "one.test:8080", "any.test:*"]);
    assert!(p.allows_name("web.test", 80) && p.allows_name("web.test", 443));
    assert!(!p.allows_name("web.test", 8080));
    assert!(p.allows_name("one.test", 8080));
    assert!(!p.allows_name("one.test", 443));
    assert!(p.allows_name("any.test", 22) && p.allows_name("any.test", 65535));
    assert_eq!(p.entries(), vec!["web.test", "one.test:8080", "any.test:*"]);
}

#[test]
fn ipv4_addresses_and_blocks() {
    let p = policy(&["203.0.113.7", "198.51.100.0/24:*", "192.0.2.9/16:22"]);
    assert!(p.allows_ip(ip("203.0.113.7"), 443));
    assert!(!p.allows_ip(ip("203.0.113.8"), 443));
    assert!(!p.allows_ip(ip("203.0.113.7"), 22));
    assert!(p.allows_ip(ip("198.51.100.255"), 1));
    assert!(!p.allows_ip(ip("198.51.101.0"), 1));
    // Host bits are cleared: the block is 192.0.0.0/16.
    assert!(p.allows_ip(ip("192.0.200.1"), 22));
    assert!(p.has_addresses());
    assert_eq!(
        p.entries(),
        vec!["203.0.113.7", "198.51.100.0/24:*", "192.0.0.0/16:22"]
    );
    // An IPv4-mapped IPv6 address reaches the IPv4 one.
    assert!(p.allows_ip(ip("::ffff:203.0.113.7"), 80));
    // An address is asked of address entries through allows_name too.
    assert!(p.allows_name("203.0.113.7", 80));
}

#[test]
fn ipv6_addresses_blocks_and_brackets() {
    let p = policy(&[
        "2001:db8::/32",
        "[2001:db9::1]:443",
        "[2001:dba::/48]:*",
        "[::1]",
    ]);
    assert!(p.allows_ip(ip("2001:db8:ffff::1"), 80));
    assert!(!p.allows_ip(ip("2001:db8:ffff::1"), 22));
    assert!(p.allows_ip(ip("2001:db9::1"), 443));
    assert!(!p.allows_ip(ip("2001:db9::1"), 80));
    assert!(p.allows_ip(ip("2001:dba:0:1::5"), 7));
    assert!(!p.allows_ip(ip("2001:dba:1::5"), 7));
    assert!(p.allows_ip(ip("::1"), 443));
    assert!(!p.allows_ip(ip("127.0.0.1"), 443));
    let entries = p.entries();
    assert_eq!(
        entries,
        vec![
            "2001:db8::/32",
            "[2001:db9::1]:443",
            "[2001:dba::/48]:*",
            "::1"
        ]
    );
    // The normal form parses back to the same policy.
    let again: Vec<&str> = entries.iter().map(String::as_str).collect();
    assert_eq!(policy(&again), p);
}

#[test]
fn edge_prefixes() {
    let p = policy(&["0.0.0.0/0:1", "[::/0]:2", "10.1.2.3/32:3"]);
    assert!(p.allows_ip(ip("255.255.255.255"), 1));
    assert!(!p.allows_ip(ip("2001:db8::1"), 1));
    assert!(p.allows_ip(ip("2001:db8::1"), 2));
    assert!(p.allows_ip(ip("10.1.2.3"), 3));
    assert!(!p.allows_ip(ip("10.1.2.4"), 3));
}

#[test]
fn names_and_addresses_do_not_mix() {
    let p = policy(&["example.com:*"]);
    assert!(!p.has_addresses());
    assert!(!p.allows_ip(ip("93.184.215.14"), 443));
    let p = policy(&["10.0.0.0/8"]);
    assert!(!p.allows_name("example.com", 443));
}

#[test]
fn the_empty_list_denies_everything() {
    let p = Policy::parse(&[]).unwrap();
    assert!(!p.allows_name("example.com", 443));
    assert!(!p.allows_ip(ip("127.0.0.1"), 80));
    assert!(!p.has_addresses());
    assert!(p.entries().is_empty());
}

#[test]
fn bad_entries_name_themselves_and_the_forms() {
    let e = error("exa mple.com");
    assert!(e.contains("\"exa mple.com\""), "{e}");
    assert!(e.contains("valid forms: example.com, *.example.com"), "{e}");
    for bad in [
        "",
        "example.com:",
        "example.com:0",
        "example.com:65536",
        "example.com:+80",
        "example.com:http",
        "*.",
        "*",
        "a.*.example.com",
        "ex*ample.com",
        "-.example..com",
        "10.0.0.0/33",
        "2001:db8::/129",
        "example.com/8",
        "[203.0.113.7]:443",
        "[2001:db8::1",
        "[2001:db8::1]443",
        "2001:db8::1:443:x",
        "127.1",
        "a.0x7f",
        "under_score.example.com",
    ] {
        assert!(
            Policy::parse(&[bad.to_string()]).is_err(),
            "{bad:?} should not parse"
        );
    }
    let long_label = format!("{}.com", "a".repeat(64));
    assert!(Policy::parse(&[long_label]).is_err());
    let long_name = ["abcdefghi"; 26].join("."); // 259 characters
    assert!(Policy::parse(&[long_name]).is_err());
    assert!(Policy::parse(&[format!("{}.com", "a".repeat(63))]).is_ok());
}

#[test]
fn at_most_256_entries() {
    let many: Vec<String> = (0..=MAX_ENTRIES).map(|i| format!("h{i}.test")).collect();
    assert_eq!(
        Policy::parse(&many).unwrap_err(),
        PolicyError::TooMany { count: 257 }
    );
    assert!(Policy::parse(&many[..MAX_ENTRIES]).is_ok());
}

#[test]
fn name_normal_form() {
    assert_eq!(
        normalize_name("WWW.Example.com.").as_deref(),
        Some("www.example.com")
    );
    assert_eq!(normalize_name("localhost").as_deref(), Some("localhost"));
    assert_eq!(normalize_name("a..b"), None);
    assert_eq!(normalize_name("."), None);
    assert_eq!(normalize_name("1.2.3.4"), None);
}
