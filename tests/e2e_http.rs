//! deskvm over HTTP, driven by real clients: rmcp's streamable HTTP client and, at the same
//! time, the official MCP Python SDK over the legacy HTTP+SSE transport, on one desktop; the
//! guard (tokens, Origin, body size); sessions that outlive their client; reviews over HTTP.

mod common;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use common::*;
use deskvm::client::{Client, HttpServer};
use serde_json::{json, Value};

const ALICE: &str = "alice-0123456789abcdef";
const BOB: &str = "bob-0123456789abcdef00";

async fn http_server(dirs: &[PathBuf], extra: &[&str]) -> Result<HttpServer> {
    let env = Env::of(&dirs[0], &dirs[1]);
    let mut args = vec!["--backend", "local"];
    args.extend_from_slice(extra);
    HttpServer::spawn(Path::new(env!("CARGO_BIN_EXE_deskvm")), &args, &env.pairs()).await
}

fn token_file(dir: &Path) -> Result<PathBuf> {
    let f = dir.join("tokens");
    std::fs::write(&f, format!("alice:{ALICE}\nbob:{BOB}\n"))?;
    Ok(f)
}

/// rmcp over streamable HTTP and the Python SDK over legacy SSE share one desktop, at once.
#[tokio::test]
async fn streamable_http_and_legacy_sse_clients_share_a_desktop() -> Result<()> {
    let py = common::python::python()?;
    let (d, _guard) = temp_dirs(&["ht", "hd"])?;
    let server = http_server(&d, &[]).await?;
    let rust = Client::connect_http(&server.mcp_url(), None).await?;
    let tools = rust.tool_names().await?;
    assert!(tools.contains(&"screenshot".to_string()) && tools.contains(&"reclaim".to_string()));
    // Limits are in the schemas the client sees.
    let click = rust.tool_schema("click").await?;
    assert_eq!(click["properties"]["count"]["minimum"], 1, "{click}");
    assert_eq!(click["properties"]["count"]["maximum"], 3, "{click}");
    let sid = start(&rust).await?;

    let rounds = 4;
    let python = tokio::process::Command::new(&py)
        .arg(common::python::script("sse_client.py"))
        .args([server.base.as_str(), sid.as_str(), &rounds.to_string()])
        .output();
    let ours = async {
        for i in 0..rounds {
            rust.screenshot(&sid, json!({})).await?;
            rust.call_ok(
                "click",
                json!({ "session_id": sid, "x": 300 + i * 5, "y": 250 }),
            )
            .await?;
        }
        Ok::<_, anyhow::Error>(())
    };
    let (py_out, ours) = tokio::join!(python, ours);
    ours?;
    let py_out = py_out?;
    assert!(
        py_out.status.success(),
        "python SSE client failed: {}\n{}",
        String::from_utf8_lossy(&py_out.stderr),
        String::from_utf8_lossy(&py_out.stdout)
    );
    let report: Value = serde_json::from_slice(&py_out.stdout).context("python output")?;
    assert_eq!(report["screenshots"], rounds, "{report}");
    assert_eq!(report["clicks"], rounds, "{report}");
    assert!(report["tools"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t == "session_start"));

    // Every call of both clients is in the session's ledger, numbered without gaps, in the
    // order the server answered them.
    let ev = events(&d[1].join("reviews").join(&sid))?;
    seqs_are_gapless(&ev);
    let calls: Vec<&Value> = ev.iter().filter(|e| e["kind"] != "frame").collect();
    let count = |tool: &str| calls.iter().filter(|e| e["tool"] == tool).count();
    assert_eq!(count("screenshot"), 2 * rounds, "{calls:?}");
    assert_eq!(count("click"), 2 * rounds, "{calls:?}");
    let at: Vec<&str> = calls.iter().map(|e| e["at"].as_str().unwrap()).collect();
    assert!(
        at.windows(2).all(|w| w[0] <= w[1]),
        "timestamps in order: {at:?}"
    );
    // Which connection started it.
    let list = rust.call_ok("session_list", json!({})).await?;
    assert!(
        list["sessions"][0]["connection"]
            .as_str()
            .unwrap()
            .starts_with("http:"),
        "{list}"
    );
    Ok(())
}

/// A client that goes away leaves its desktop running; another client carries on with it.
#[tokio::test]
async fn a_session_outlives_the_client_that_started_it() -> Result<()> {
    let (d, _guard) = temp_dirs(&["ht", "hd"])?;
    let server = http_server(&d, &[]).await?;
    let first = Client::connect_http(&server.mcp_url(), None).await?;
    let sid = start(&first).await?;
    first
        .call_ok(
            "exec",
            json!({ "session_id": sid, "command": "echo kept > /tmp/kept" }),
        )
        .await?;
    first.close().await?;

    let second = Client::connect_http(&server.mcp_url(), None).await?;
    second.screenshot(&sid, json!({})).await?;
    assert_eq!(guest(&second, &sid, "cat /tmp/kept").await?, "kept\n");
    Ok(())
}

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

async fn initialize(
    base: &str,
    headers: &[(&str, &str)],
    body: Option<String>,
) -> Result<reqwest::Response> {
    let body = body.unwrap_or_else(|| {
        json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}).to_string()
    });
    let mut req = http()
        .post(format!("{base}/mcp"))
        .header("Accept", "application/json, text/event-stream")
        .header("Content-Type", "application/json")
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    Ok(req.send().await?)
}

/// Tokens, Origin and body size are checked before anything is served; sessions belong to the
/// token that started them; reviews are served behind the same token.
#[tokio::test]
async fn the_http_guard_and_token_owned_sessions_and_reviews() -> Result<()> {
    // A non-loopback address without a token is refused, saying how to give one.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_deskvm"))
        .args(["serve", "--http", "0.0.0.0:0"])
        .env_remove("DESKVM_TOKEN")
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--token-file") && err.contains("DESKVM_TOKEN"),
        "{err}"
    );

    let (d, _guard) = temp_dirs(&["ht", "hd"])?;
    let tokens = token_file(&d[1])?;
    let server = http_server(&d, &["--token-file", tokens.to_str().unwrap()]).await?;
    let base = server.base.clone();
    let bearer = |t: &str| format!("Bearer {t}");

    let r = initialize(&base, &[], None).await?;
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"]
        .to_str()?
        .starts_with("Bearer"));
    let r = initialize(
        &base,
        &[("Authorization", &bearer("not-a-valid-token-at-all"))],
        None,
    )
    .await?;
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"]
        .to_str()?
        .contains("invalid_token"));
    let r = initialize(
        &base,
        &[
            ("Authorization", &bearer(ALICE)),
            ("Origin", "http://evil.example"),
        ],
        None,
    )
    .await?;
    assert_eq!(r.status(), 403);
    // Every route, not only rmcp's: a foreign or null Origin, a foreign Host.
    for path in ["/sse", "/reviews/x/index.html"] {
        for (k, v) in [
            ("Origin", "http://evil.example"),
            ("Origin", "null"),
            ("Host", "evil.example"),
        ] {
            let r = http()
                .get(format!("{base}{path}"))
                .header("Authorization", bearer(ALICE))
                .header(k, v)
                .send()
                .await?;
            assert_eq!(r.status(), 403, "{path} with {k}: {v}");
        }
    }
    let r = initialize(
        &base,
        &[
            ("Authorization", &bearer(ALICE)),
            ("Origin", "http://localhost:5173"),
        ],
        None,
    )
    .await?;
    assert_eq!(r.status(), 200, "a loopback origin is fine");
    let huge = format!("{{\"pad\":\"{}\"}}", "x".repeat(17 << 20));
    let r = initialize(
        &base,
        &[("Authorization", &bearer(ALICE))],
        Some(huge.clone()),
    )
    .await?;
    assert_eq!(r.status(), 413);
    let r = http().get(format!("{base}/sse")).send().await?;
    assert_eq!(r.status(), 401, "the legacy transport is guarded too");
    // The legacy message endpoint limits bodies too.
    let mut sse = http()
        .get(format!("{base}/sse"))
        .header("Authorization", bearer(ALICE))
        .send()
        .await?;
    assert_eq!(sse.status(), 200);
    let first =
        String::from_utf8_lossy(&sse.chunk().await?.context("an endpoint event")?).into_owned();
    let endpoint = first
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .with_context(|| format!("no endpoint in {first:?}"))?
        .to_string();
    let r = http()
        .post(format!("{base}{endpoint}"))
        .header("Authorization", bearer(ALICE))
        .header("Content-Type", "application/json")
        .body(huge.clone())
        .send()
        .await?;
    assert_eq!(r.status(), 413);
    let r = http()
        .post(format!("{base}{endpoint}"))
        .header("Authorization", bearer(BOB))
        .header("Content-Type", "application/json")
        .body("{}")
        .send()
        .await?;
    assert_eq!(
        r.status(),
        404,
        "another token cannot post into alice's stream"
    );
    drop(sse);
    // Both protocol revisions rmcp speaks: the 2025-11-25 handshake, and 2026-07-28's
    // per-request version with no handshake.
    let r = initialize(&base, &[("Authorization", &bearer(ALICE))], None).await?;
    assert!(r
        .text()
        .await?
        .contains("\"protocolVersion\":\"2025-11-25\""));
    let stateless = json!({"jsonrpc":"2.0","id":7,"method":"tools/list","params":{"_meta":{
        "io.modelcontextprotocol/protocolVersion":"2026-07-28",
        "io.modelcontextprotocol/clientCapabilities":{}}}});
    let r = initialize(
        &base,
        &[
            ("Authorization", &bearer(ALICE)),
            ("MCP-Protocol-Version", "2026-07-28"),
            ("Mcp-Method", "tools/list"),
        ],
        Some(stateless.to_string()),
    )
    .await?;
    assert_eq!(r.status(), 200);
    assert!(r.text().await?.contains("\"name\":\"screenshot\""));
    // doctor says what this server exposes (and never a secret).
    let doctor = std::process::Command::new(env!("CARGO_BIN_EXE_deskvm"))
        .arg("doctor")
        .output()?;
    let doctor = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        doctor
            .lines()
            .any(|l| l.contains(&format!("{base}/mcp")) && l.contains("2 bearer token(s)")),
        "{doctor}"
    );
    assert!(!doctor.contains(ALICE) && !doctor.contains(BOB));

    // Sessions belong to the token that started them.
    let alice = Client::connect_http(&server.mcp_url(), Some(ALICE)).await?;
    let bob = Client::connect_http(&server.mcp_url(), Some(BOB)).await?;
    let sid = start(&alice).await?;
    let r = bob.call("screenshot", json!({ "session_id": sid })).await?;
    let err = r.structured_content.context("structured error")?;
    assert_eq!(err["error"], "unknown_session", "{err}");
    assert_eq!(err["known"], json!([]), "bob is told of no session: {err}");
    let bobs = bob.call_ok("session_list", json!({})).await?;
    assert_eq!(bobs["sessions"], json!([]), "{bobs}");
    let alices = alice.call_ok("session_list", json!({})).await?;
    assert_eq!(alices["sessions"][0]["token"], "alice", "{alices}");

    // The review, over HTTP, behind the token.
    alice.screenshot(&sid, json!({})).await?;
    let x = alice
        .call_ok(
            "export_review",
            json!({ "session_id": sid, "name": "over-http" }),
        )
        .await?;
    let url = x["url"]
        .as_str()
        .context("export_review returns a URL over HTTP")?;
    assert_eq!(url, format!("{base}/reviews/over-http/index.html"));
    assert_eq!(http().get(url).send().await?.status(), 401);
    let page = http()
        .get(url)
        .header("Authorization", bearer(BOB))
        .send()
        .await?;
    assert_eq!(page.status(), 404, "bob cannot open alice's review");
    let (kind, _) = tool_error(
        &bob,
        "export_review",
        json!({ "session_id": sid, "name": "stolen" }),
    )
    .await?;
    assert_eq!(kind, "unknown_session", "bob cannot export alice's session");
    assert!(
        bob.resource_uris().await?.is_empty(),
        "bob lists none of alice's bundles"
    );
    assert!(!alice.resource_uris().await?.is_empty());
    let page = http()
        .get(url)
        .header("Authorization", bearer(ALICE))
        .send()
        .await?;
    assert_eq!(page.status(), 200);
    assert!(page.text().await?.contains("deskvm review"));
    let review: Value =
        serde_json::from_slice(&std::fs::read(d[1].join("exports/over-http/review.json"))?)?;
    let shot = std::fs::read_dir(d[1].join("exports/over-http/shots"))?
        .flatten()
        .next()
        .context("the bundle has pictures")?
        .file_name()
        .to_string_lossy()
        .into_owned();
    let png_url = format!("{base}/reviews/over-http/shots/{shot}");
    assert_eq!(http().get(&png_url).send().await?.status(), 401);
    let png = http()
        .get(&png_url)
        .header("Authorization", bearer(ALICE))
        .send()
        .await?;
    assert_eq!(png.status(), 200);
    assert_eq!(png.headers()["content-type"], "image/png");
    assert!(png.bytes().await?.starts_with(b"\x89PNG"));
    let sneaky = http()
        .get(format!(
            "{base}/reviews/over-http/%2e%2e/%2e%2e/reviews/{sid}/timeline.jsonl"
        ))
        .header("Authorization", bearer(ALICE))
        .send()
        .await?;
    assert_ne!(sneaky.status(), 200, "nothing outside the exports dir");
    // A person's browser: the token once in the URL, then the page's pictures load by cookie.
    let dom = common::browser::dom_url(&format!("{url}?token={ALICE}"))?;
    assert!(
        dom.contains("data-loaded=\"1280x800\""),
        "pictures load in a browser over HTTP: {}",
        &dom[..dom.len().min(2000)]
    );
    assert!(review["counts"]["shots"].as_u64().unwrap() > 0);

    // The live view over HTTP: behind the server's token, then the link's own.
    let v = alice
        .call_ok(
            "session_view",
            json!({ "session_id": sid, "control": true }),
        )
        .await?;
    let view = v["url"].as_str().context("session_view url")?.to_string();
    assert!(view.starts_with(&format!("{base}/view/")), "{v}");
    assert!(v["note"].as_str().unwrap().contains("token"), "{v}");
    assert_eq!(http().get(&view).send().await?.status(), 401);
    let as_bob = http()
        .get(&view)
        .header("Authorization", bearer(BOB))
        .send()
        .await?;
    assert_eq!(
        as_bob.status(),
        403,
        "alice's link does not open with bob's token"
    );
    let as_alice = http()
        .get(&view)
        .header("Authorization", bearer(ALICE))
        .send()
        .await?;
    assert_eq!(as_alice.status(), 200);
    // A person's browser: the token once in the URL, then the page and its WebSocket by cookie.
    let browser = deskvm_devtools::cdp::Browser::launch(1400, 1000).await?;
    let page = browser.open(&format!("{view}?token={ALICE}")).await?;
    common::view::canvas_matches_screenshot(&alice, &sid, &page).await?;
    assert!(
        !page
            .eval("location.href")
            .await?
            .as_str()
            .unwrap()
            .contains(ALICE),
        "the token does not stay in the address bar"
    );
    drop(browser);
    // SIGTERM with a legacy SSE stream still open: the server stops its sessions and exits.
    let mut open = http()
        .get(format!("{base}/sse"))
        .header("Authorization", bearer(ALICE))
        .send()
        .await?;
    open.chunk().await?;
    let mut server = server;
    let pid = server.pid().context("server pid")? as i32;
    // SAFETY: kill has no memory-safety preconditions; the pid is the server this test spawned.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = tokio::time::timeout(std::time::Duration::from_secs(30), server.child.wait())
        .await
        .context("the server did not exit within 30 s of SIGTERM with a stream open")??;
    assert!(status.success(), "{status}");
    let left: Vec<_> = std::fs::read_dir(d[0].join("s"))?.flatten().collect();
    assert!(left.is_empty(), "sessions stopped at shutdown: {left:?}");
    drop(open);
    Ok(())
}

/// Counts the progress notifications a client receives.
#[derive(Clone, Default)]
struct Watch(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl rmcp::ClientHandler for Watch {
    fn on_progress(
        &self,
        _params: rmcp::model::ProgressNotificationParam,
        _context: rmcp::service::NotificationContext<rmcp::RoleClient>,
    ) -> impl std::future::Future<Output = ()> + Send + '_ {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::future::ready(())
    }
}

fn tool_request(tool: &str, args: Value) -> rmcp::model::ClientRequest {
    let params = rmcp::model::CallToolRequestParams::new(tool.to_string())
        .with_arguments(args.as_object().cloned().unwrap_or_default());
    rmcp::model::ClientRequest::CallToolRequest(rmcp::model::Request::new(params))
}

/// Long calls send progress while they run; a cancelled wait or exec stops, frees the session
/// for the next call at once, and is recorded as cancelled.
#[tokio::test]
async fn long_calls_report_progress_and_can_be_cancelled() -> Result<()> {
    use rmcp::service::PeerRequestOptions;
    use rmcp::ServiceExt;
    let (d, _guard) = temp_dirs(&["ht", "hd"])?;
    let server = http_server(&d, &[]).await?;
    let watch = Watch::default();
    let transport = rmcp::transport::StreamableHttpClientTransport::from_uri(server.mcp_url());
    let client = watch.clone().serve(transport).await?;
    let started = client
        .send_cancellable_request(
            tool_request("session_start", json!({})),
            PeerRequestOptions::no_options(),
        )
        .await?
        .await_response()
        .await?;
    let rmcp::model::ServerResult::CallToolResult(started) = started else {
        anyhow::bail!("session_start answered {started:?}");
    };
    let sid = sid(started
        .structured_content
        .as_ref()
        .context("session info")?);

    let before = watch.0.load(std::sync::atomic::Ordering::SeqCst);
    let waited = client
        .send_cancellable_request(
            tool_request("wait", json!({ "session_id": sid, "ms": 3500 })),
            PeerRequestOptions::no_options(),
        )
        .await?
        .await_response()
        .await?;
    assert!(
        matches!(waited, rmcp::model::ServerResult::CallToolResult(_)),
        "{waited:?}"
    );
    let progress = watch.0.load(std::sync::atomic::Ordering::SeqCst) - before;
    assert!(
        progress >= 2,
        "a 3.5 s wait sends progress every second: got {progress}"
    );

    for (tool, args) in [
        ("wait", json!({ "session_id": sid, "ms": 60000 })),
        (
            "exec",
            json!({ "session_id": sid, "command": "sleep 60", "timeout_ms": 120000 }),
        ),
    ] {
        let handle = client
            .send_cancellable_request(tool_request(tool, args), PeerRequestOptions::no_options())
            .await?;
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        handle.cancel(Some("test".into())).await?;
        // The lane is free again: the next call answers long before the cancelled one would.
        let next = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            client.call_tool(
                rmcp::model::CallToolRequestParams::new("screenshot")
                    .with_arguments(json!({ "session_id": sid }).as_object().cloned().unwrap()),
            ),
        )
        .await
        .with_context(|| format!("the session stayed busy after cancelling {tool}"))??;
        assert_ne!(next.is_error, Some(true));
    }
    let ev = events(&d[1].join("reviews").join(&sid))?;
    let cancelled: Vec<&str> = ev
        .iter()
        .filter(|e| e["error"]["error"] == "cancelled")
        .filter_map(|e| e["tool"].as_str())
        .collect();
    assert_eq!(
        cancelled,
        vec!["wait", "exec"],
        "both cancels are in the ledger"
    );
    Ok(())
}

/// A client that speaks the tasks extension gets a long exec as a task it polls; cancelling the
/// task stops the wait, frees the session, and the ledger says so.
#[tokio::test]
async fn long_execs_run_as_tasks_for_clients_that_speak_them() -> Result<()> {
    use rmcp::model::{
        CallToolRequestParams, CallToolResponse, CancelTaskParams, ClientCapabilities,
        ClientConfig, GetTaskParams, Implementation, TaskPayload, TaskStatus,
    };
    use rmcp::ServiceExt;
    let (d, _guard) = temp_dirs(&["ht", "hd"])?;
    let server = http_server(&d, &[]).await?;
    let config = ClientConfig::new(
        ClientCapabilities::builder().enable_tasks().build(),
        Implementation::new("tasks-test", "1"),
    );
    let transport = rmcp::transport::StreamableHttpClientTransport::from_uri(server.mcp_url());
    let client = config.serve(transport).await?;
    let started = client
        .call_tool(CallToolRequestParams::new("session_start"))
        .await?;
    let sid = sid(started
        .structured_content
        .as_ref()
        .context("session info")?);
    let exec = |cmd: &str| {
        let args = json!({ "session_id": sid, "command": cmd, "timeout_ms": 60000 });
        CallToolRequestParams::new("exec").with_arguments(args.as_object().cloned().unwrap())
    };
    let poll = |id: String| {
        let client = &client;
        async move {
            for _ in 0..80 {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                let t = client
                    .peer()
                    .get_task(GetTaskParams::new(id.clone()))
                    .await?;
                if t.task.status().is_terminal() {
                    return Ok::<_, anyhow::Error>(t.task);
                }
            }
            anyhow::bail!("task {id} did not end within 20 s")
        }
    };

    let r = client
        .call_tool_once(exec("sleep 2; echo from-a-task"))
        .await?;
    let CallToolResponse::Task(created) = r else {
        anyhow::bail!("a 60 s exec should run as a task: {r:?}");
    };
    let done = poll(created.task.task_id.clone()).await?;
    let TaskPayload::Completed { result } = done.payload else {
        anyhow::bail!("the task should complete: {:?}", done.payload);
    };
    assert_eq!(
        result["structuredContent"]["stdout"], "from-a-task\n",
        "{result:?}"
    );

    let r = client.call_tool_once(exec("sleep 60")).await?;
    let CallToolResponse::Task(created) = r else {
        anyhow::bail!("expected a task: {r:?}");
    };
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    client
        .peer()
        .cancel_task(CancelTaskParams::new(created.task.task_id.clone()))
        .await?;
    let done = poll(created.task.task_id.clone()).await?;
    assert_eq!(done.status(), TaskStatus::Cancelled);
    let next = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        client.call_tool(
            CallToolRequestParams::new("screenshot")
                .with_arguments(json!({ "session_id": sid }).as_object().cloned().unwrap()),
        ),
    )
    .await
    .context("the session stayed busy after the task was cancelled")??;
    assert_ne!(next.is_error, Some(true));
    let ev = events(&d[1].join("reviews").join(&sid))?;
    let execs: Vec<&Value> = ev.iter().filter(|e| e["tool"] == "exec").collect();
    assert_eq!(execs.len(), 2, "{execs:?}");
    assert_eq!(execs[1]["error"]["error"], "cancelled", "{:?}", execs[1]);
    Ok(())
}
