//! The guest's network (local backend, minimal image): with no network a guest still reaches
//! the host services it was given (`forward`) and nothing else; an allowlist lets one host
//! through the proxy and denies another, which never sees a connection, and the guest has no
//! way around the proxy (no direct route, no DNS); every proxy decision and forwarded
//! connection is in the ledger. Everything talks to HTTP servers of the test on 127.0.0.1.

mod common;

use anyhow::Result;
use common::net::{marker, rc_of, review, sh, wait_for_event, HostService};
use common::*;
use serde_json::{json, Value};

fn stdout(out: &Value) -> String {
    out["stdout"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn forward_reaches_a_host_service_with_no_network() -> Result<()> {
    let svc = HostService::start(&marker("forward"))?;
    let port = svc.port;
    let s = server_with(&["--backend", "local", "--allow-forward", &port.to_string()]).await?;
    let c = &s.client;
    let info = c
        .call_ok(
            "session_start",
            json!({ "forward": [format!("127.0.0.1:{port}")] }),
        )
        .await?;
    let sid = sid(&info);
    let network = &info["network"];
    assert_eq!(network["mode"], "none", "no network is the default: {info}");
    assert_eq!(
        network["forwards"][0]["guest"],
        format!("host.deskvm.internal:{port}"),
        "{info}"
    );
    assert_eq!(
        network["forwards"][0]["host"],
        format!("127.0.0.1:{port}"),
        "{info}"
    );

    let out = sh(
        c,
        &sid,
        &format!("curl -sS --max-time 20 http://host.deskvm.internal:{port}/"),
    )
    .await?;
    assert!(
        stdout(&out).contains(&svc.title),
        "the forwarded service's page, got: {out}"
    );
    let seen = svc.connections();
    assert!(seen >= 1, "the host service saw no connection");

    // No network otherwise: the same service straight through the NAT gateway is out of reach.
    let out = sh(
        c,
        &sid,
        &format!("curl -sS --max-time 5 http://10.0.2.2:{port}/; echo rc=$?"),
    )
    .await?;
    let rc = rc_of(&stdout(&out));
    assert!(
        rc.is_some_and(|rc| rc != 0),
        "a direct connection worked: {out}"
    );
    assert!(!stdout(&out).contains(&svc.title), "{out}");
    assert_eq!(
        svc.connections(),
        seen,
        "a connection came around the forward"
    );

    let ev = wait_for_event(&review(&s, &sid), "forwarded connection", |e| {
        e["kind"] == "network" && e["via"] == "forward"
    })
    .await?;
    assert_eq!(ev["port"], port, "{ev}");
    assert_eq!(ev["decision"], "allowed", "{ev}");
    assert!(ev["bytes_down"].as_u64().unwrap_or(0) > 0, "{ev}");
    c.call_ok("session_stop", json!({ "session_id": sid }))
        .await?;
    s.client.close().await
}

#[tokio::test]
async fn forward_refused_before_start() -> Result<()> {
    let s = server_with(&["--backend", "local", "--allow-forward", "4100-4102"]).await?;
    let c = &s.client;
    let (kind, msg) =
        tool_error(c, "session_start", json!({ "forward": ["127.0.0.1:4200"] })).await?;
    assert_eq!(kind, "forward_refused", "{msg}");
    assert!(msg.contains("4200"), "names the refused port: {msg}");
    assert!(msg.contains("4100"), "names the allowed ports: {msg}");
    // An allowed port, on an address that is not this host's loopback.
    let (kind, msg) =
        tool_error(c, "session_start", json!({ "forward": ["192.0.2.1:4101"] })).await?;
    assert_eq!(kind, "forward_refused", "{msg}");
    assert!(msg.contains("loopback"), "{msg}");
    let (kind, msg) =
        tool_error(c, "session_start", json!({ "forward": ["192.0.2.1:80"] })).await?;
    assert_eq!(kind, "forward_refused", "{msg}");
    let list = c.call_ok("session_list", json!({})).await?;
    assert_eq!(list["sessions"], json!([]), "nothing was started: {list}");
    s.client.close().await
}

#[tokio::test]
async fn allowlist_allows_one_denies_the_other() -> Result<()> {
    let a = HostService::start(&marker("allowed"))?;
    let b = HostService::start(&marker("denied"))?;
    let (pa, pb) = (a.port, b.port);
    let s = server_with(&[
        "--backend",
        "local",
        "--resolve",
        "allowed.test=127.0.0.1",
        "--resolve",
        "denied.test=127.0.0.1",
    ])
    .await?;
    let c = &s.client;
    let entry = format!("allowed.test:{pa}");
    let info = c
        .call_ok("session_start", json!({ "network": { "allow": [entry] } }))
        .await?;
    let sid = sid(&info);
    assert_eq!(info["network"]["mode"], "allow", "{info}");
    assert_eq!(info["network"]["allow"], json!([entry]), "{info}");
    assert_eq!(
        info["network"]["proxy"], "http://proxy.deskvm.internal:3128",
        "{info}"
    );
    let env = stdout(&sh(c, &sid, "echo \"$http_proxy\"").await?);
    assert!(
        env.contains("proxy.deskvm.internal:3128"),
        "exec's http_proxy: {env}"
    );

    let out = sh(
        c,
        &sid,
        &format!("curl -sS --max-time 20 http://allowed.test:{pa}/"),
    )
    .await?;
    assert!(stdout(&out).contains(&a.title), "{out}");
    let status = "curl -s -o /dev/null -w '%{http_code}' --max-time 20";
    let out = sh(c, &sid, &format!("{status} http://denied.test:{pb}/")).await?;
    assert_eq!(stdout(&out).trim(), "403", "{out}");
    // The allowed name on a port that was not allowed.
    let out = sh(c, &sid, &format!("{status} http://allowed.test:{pb}/")).await?;
    assert_eq!(stdout(&out).trim(), "403", "{out}");

    // No way around the proxy: no route to the host, no DNS.
    let direct = format!("curl --noproxy '*' -sS --max-time 5 http://10.0.2.2:{pb}/; echo rc=$?");
    let out = sh(c, &sid, &direct).await?;
    assert!(rc_of(&stdout(&out)).is_some_and(|rc| rc != 0), "{out}");
    let out = sh(c, &sid, "getent hosts denied.test; echo rc=$?").await?;
    assert!(
        rc_of(&stdout(&out)).is_some_and(|rc| rc != 0),
        "DNS answered: {out}"
    );

    assert_eq!(b.connections(), 0, "the denied service was reached");
    assert!(a.connections() >= 1, "the allowed service was not reached");

    let dir = review(&s, &sid);
    let ok = wait_for_event(&dir, "allowed decision", |e| {
        e["kind"] == "network" && e["decision"] == "allowed" && e["host"] == "allowed.test"
    })
    .await?;
    assert_eq!(ok["port"], pa, "{ok}");
    let no = wait_for_event(&dir, "denied decision", |e| {
        e["kind"] == "network" && e["decision"] == "denied" && e["host"] == "denied.test"
    })
    .await?;
    assert_eq!(no["port"], pb, "{no}");
    wait_for_event(&dir, "denied decision for the port not allowed", |e| {
        e["kind"] == "network"
            && e["decision"] == "denied"
            && e["host"] == "allowed.test"
            && e["port"] == pb
    })
    .await?;
    // The attempt around the proxy is in the ledger with what it printed.
    let tried = wait_for_event(&dir, "the direct attempt's exec", |e| {
        e["tool"] == "exec"
            && e["args"]["command"]
                .as_str()
                .is_some_and(|cmd| cmd.contains("--noproxy"))
    })
    .await?;
    let said = tried["outcome"]["stdout"].as_str().unwrap_or_default();
    assert!(rc_of(said).is_some_and(|rc| rc != 0), "{tried}");
    c.call_ok("session_stop", json!({ "session_id": sid }))
        .await?;
    // The review a person opens shows both decisions, in a real browser.
    let exported = c
        .call_ok("export_review", json!({ "session_id": sid }))
        .await?;
    let page = exported["index_html"].as_str().unwrap_or_default();
    let dom = common::browser::dom(std::path::Path::new(page))?;
    for shown in [
        "network allowed",
        "network denied",
        "allowed.test:",
        "denied.test:",
    ] {
        assert!(dom.contains(shown), "the review does not show {shown:?}");
    }
    s.client.close().await
}

#[tokio::test]
async fn network_modes_are_validated() -> Result<()> {
    let s = server().await?;
    let c = &s.client;
    let (kind, msg) = tool_error(
        c,
        "session_start",
        json!({ "network": { "allow": ["example.com", "bad domain!"] } }),
    )
    .await?;
    assert_eq!(kind, "invalid_params", "{msg}");
    assert!(msg.contains("bad domain!"), "names the entry: {msg}");
    let (kind, msg) = tool_error(
        c,
        "session_start",
        json!({ "network": { "allow": ["example.com:99999"] } }),
    )
    .await?;
    assert_eq!(kind, "invalid_params", "{msg}");
    assert!(msg.contains("99999"), "names the port: {msg}");
    // Not a mode: refused (by the tool or by the protocol layer).
    let r = c
        .call("session_start", json!({ "network": "sideways" }))
        .await;
    if let Ok(r) = &r {
        let said = deskvm::client::text_of(r);
        assert_eq!(
            r.is_error,
            Some(true),
            "network \"sideways\" was accepted: {said}"
        );
        assert!(said.contains("network"), "names the field: {said}");
    }
    let list = c.call_ok("session_list", json!({})).await?;
    assert_eq!(
        list["sessions"],
        json!([]),
        "refused starts started nothing: {list}"
    );

    // `true` is still accepted, as "open"; the session is stopped before it contacts anything.
    let info = c
        .call_ok("session_start", json!({ "network": true }))
        .await?;
    let sid = sid(&info);
    c.call_ok("session_stop", json!({ "session_id": sid }))
        .await?;
    assert_eq!(info["network"]["mode"], "open", "{info}");
    s.client.close().await
}
