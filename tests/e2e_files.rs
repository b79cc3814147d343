//! Files in and out of a guest (local backend, minimal image): `upload` and `download` of 5 MiB
//! of random bytes read back byte-exact on both sides, text files as text; bad input refused
//! before anything is written, and recorded; `deskvm cp` both ways against a server over HTTP.

mod common;

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use common::net::{
    assert_same_bytes, b64, download, guest_sha256, random_bytes, review, sh, sha256_hex,
};
use common::*;
use deskvm::client::{Client, HttpServer};
use serde_json::{json, Value};

#[tokio::test]
async fn upload_download_5mb_exact() -> Result<()> {
    let s = server().await?;
    let c = &s.client;
    let sid = start(c).await?;
    let len = 5 << 20;
    let data = random_bytes(len);
    let sum = sha256_hex(&data);
    let path = "/root/in/blob.bin";
    let up = c
        .call_ok(
            "upload",
            json!({ "session_id": sid, "path": path, "content": b64(&data), "create_dirs": true }),
        )
        .await?;
    assert_eq!(up["size"], len as u64, "{up}");
    assert_eq!(up["sha256"], sum.as_str(), "{up}");
    assert_eq!(
        guest_sha256(c, &sid, path).await?,
        sum,
        "sha256sum in the guest"
    );
    let size = sh(c, &sid, &format!("stat -c %s {path}")).await?;
    assert_eq!(size["stdout"], format!("{len}\n"), "{size}");

    let down = download(c, &sid, path).await?;
    assert_eq!(down.meta["sha256"], sum.as_str(), "{}", down.meta);
    assert_eq!(down.meta["size"], len as u64, "{}", down.meta);
    assert_eq!(down.meta["text"], false, "{}", down.meta);
    assert!(
        down.text.is_none(),
        "binary data came back as a text resource"
    );
    assert!(
        down.uri
            .starts_with(&format!("deskvm://sessions/{sid}/files/"))
            && down.uri.ends_with("root/in/blob.bin"),
        "{}",
        down.uri
    );
    assert_same_bytes(&down.bytes, &data, "the downloaded 5 MiB");

    // A small text file, with a mode, comes back as a text resource.
    let text = "héllo deskvm\nzweite Zeile ✓\n";
    let note = "/root/in/note.txt";
    c.call_ok(
        "upload",
        json!({ "session_id": sid, "path": note, "content": b64(text.as_bytes()), "mode": "0600" }),
    )
    .await?;
    let mode = sh(c, &sid, &format!("stat -c %a {note}")).await?;
    assert_eq!(mode["stdout"], "600\n", "{mode}");
    let down = download(c, &sid, note).await?;
    assert_eq!(down.meta["text"], true, "{}", down.meta);
    assert_eq!(down.text.as_deref(), Some(text), "{}", down.meta);
    assert_eq!(down.meta["size"], text.len() as u64, "{}", down.meta);
    assert_eq!(down.meta["sha256"], sha256_hex(text.as_bytes()).as_str());
    c.call_ok("session_stop", json!({ "session_id": sid }))
        .await?;
    s.client.close().await
}

/// The failed `upload` events of a ledger.
fn failed_uploads(ev: &[Value]) -> Vec<&Value> {
    ev.iter()
        .filter(|e| e["kind"] == "action_failed" && e["tool"] == "upload")
        .collect()
}

async fn absent(c: &Client, sid: &str, paths: &str) -> Result<()> {
    let out = sh(c, sid, &format!("ls -d {paths} 2>/dev/null | wc -l")).await?;
    assert_eq!(
        out["stdout"], "0\n",
        "something was written: {paths}: {out}"
    );
    Ok(())
}

#[tokio::test]
async fn bad_input_refused_before_writing() -> Result<()> {
    let s = server().await?;
    let c = &s.client;
    let sid = start(c).await?;
    let up = |path: &str, content: String, extra: Value| {
        let mut args = json!({ "session_id": sid, "path": path, "content": content });
        if let (Value::Object(a), Value::Object(e)) = (&mut args, extra) {
            a.extend(e);
        }
        args
    };

    let (kind, msg) = tool_error(c, "upload", up("in/rel.bin", b64(b"x"), json!({}))).await?;
    assert_eq!(kind, "invalid_params", "{msg}");
    absent(c, &sid, "/in/rel.bin /root/in/rel.bin /in /root/in").await?;

    let (kind, msg) = tool_error(
        c,
        "upload",
        up("/root/b64.bin", "!!not base64!!".into(), json!({})),
    )
    .await?;
    assert_eq!(kind, "invalid_params", "{msg}");
    absent(c, &sid, "/root/b64.bin").await?;

    // 10 MiB and one byte, decoded: about 14 MB of base64 in one request.
    let big = b64(&vec![0u8; (10 << 20) + 1]);
    let refused = tokio::time::timeout(
        Duration::from_secs(180),
        tool_error(c, "upload", up("/root/big.bin", big, json!({}))),
    )
    .await
    .context(
        "no answer within 180 s to an upload of 10 MiB + 1 (14 MB of JSON in one stdio line; \
         rmcp's transport drops lines over its max_line_length, 16 MiB by default)",
    )??;
    let (kind, msg) = refused;
    assert_eq!(kind, "invalid_params", "{msg}");
    assert!(
        msg.contains("10 MiB") || msg.contains("10485760"),
        "names the limit: {msg}"
    );
    absent(c, &sid, "/root/big.bin").await?;

    // An existing file is replaced only when asked to.
    let path = "/root/exists.txt";
    c.call_ok("upload", up(path, b64(b"first\n"), json!({})))
        .await?;
    let first = sha256_hex(b"first\n");
    assert_eq!(guest_sha256(c, &sid, path).await?, first);
    let (kind, msg) = tool_error(c, "upload", up(path, b64(b"second\n"), json!({}))).await?;
    assert_eq!(kind, "exists", "{msg}");
    assert!(msg.contains(path), "{msg}");
    assert_eq!(
        guest_sha256(c, &sid, path).await?,
        first,
        "the file changed"
    );
    let again = c
        .call_ok(
            "upload",
            up(path, b64(b"second\n"), json!({ "overwrite": true })),
        )
        .await?;
    let second = sha256_hex(b"second\n");
    assert_eq!(again["sha256"], second.as_str(), "{again}");
    assert_eq!(guest_sha256(c, &sid, path).await?, second, "not replaced");

    // A missing parent is made only with create_dirs.
    let dir = format!("/root/absent-{:08x}", rand::random::<u32>());
    let (kind, msg) = tool_error(
        c,
        "upload",
        up(&format!("{dir}/sub/x.txt"), b64(b"x"), json!({})),
    )
    .await?;
    assert_eq!(kind, "invalid_params", "{msg}");
    assert!(msg.contains(&dir), "names the directory: {msg}");
    absent(c, &sid, &dir).await?;

    let (kind, msg) = tool_error(
        c,
        "upload",
        json!({ "session_id": "0000000000000000", "path": "/root/x", "content": b64(b"x") }),
    )
    .await?;
    assert_eq!(kind, "unknown_session", "{msg}");

    // Arguments that do not even parse are refused by the protocol layer and recorded too,
    // without the file's bytes.
    let secret_bytes = b64(b"file bytes the review must never hold, not even in a refusal");
    let r = c
        .call(
            "upload",
            json!({ "session_id": sid, "path": "/root/y", "content": secret_bytes, "overwrite": "yes" }),
        )
        .await?;
    assert_eq!(r.is_error, Some(true), "a string for a flag is refused");
    for entry in walk(&s.data.join("reviews"))? {
        let text = String::from_utf8_lossy(&std::fs::read(&entry)?).into_owned();
        assert!(
            !text.contains(&secret_bytes[..40]),
            "{} holds the upload's content",
            entry.display()
        );
    }

    // Every refusal is in the session's ledger, the unknown session in the server's.
    let ev = events(&review(&s, &sid))?;
    let failed = failed_uploads(&ev);
    let kinds: Vec<&str> = failed
        .iter()
        .map(|e| e["error"]["error"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "invalid_params").count(),
        5,
        "relative path, bad base64, over the limit, missing directory, a flag that does not parse: {kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == "exists").count(),
        1,
        "{kinds:?}"
    );
    assert!(
        failed.iter().any(|e| e["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&dir))),
        "the missing directory: {kinds:?}"
    );
    assert_eq!(failed.len(), 6, "{kinds:?}");
    let server_ledger = std::fs::read_dir(s.data.join("reviews"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("server-")
        })
        .context("a server ledger")?;
    assert!(
        failed_uploads(&events(&server_ledger)?)
            .iter()
            .any(|e| e["error"]["error"] == "unknown_session"),
        "the upload to an unknown session is in the server's ledger"
    );
    c.call_ok("session_stop", json!({ "session_id": sid }))
        .await?;
    s.client.close().await
}

const TOKEN: &str = "cp-test-0123456789abcdef";

/// `deskvm cp ARGS`, with nothing of the host's own settings.
async fn cp(args: &[&str], env: &Env) -> Result<std::process::Output> {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_deskvm"));
    cmd.arg("cp")
        .args(args)
        .env_remove("DESKVM_URL")
        .env_remove("DESKVM_TOKEN")
        .env_remove("DESKVM_TOKEN_FILE")
        .stdin(std::process::Stdio::null());
    for (k, v) in env.pairs() {
        cmd.env(k, v);
    }
    tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .context("deskvm cp did not finish within 120 s")?
        .context("running deskvm cp")
}

fn said(out: &std::process::Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn cp_both_ways() -> Result<()> {
    let (d, _guard) = temp_dirs(&["ht", "hd", "hc"])?;
    let env = Env::of(&d[0], &d[1]);
    let token_file = d[2].join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n"))?;
    let tf = token_file.to_str().context("a UTF-8 temp path")?;
    let server = HttpServer::spawn(
        Path::new(env!("CARGO_BIN_EXE_deskvm")),
        &["--backend", "local", "--token-file", tf],
        &env.pairs(),
    )
    .await?;
    let url = server.mcp_url();
    let c = Client::connect_http(&url, Some(TOKEN)).await?;
    let sid = start(&c).await?;

    let data = random_bytes(1 << 20);
    let local = d[2].join("x.bin");
    std::fs::write(&local, &data)?;
    let local_s = local.to_str().context("a UTF-8 temp path")?;
    let remote = format!("{sid}:/root/x.bin");
    let out = cp(&[local_s, &remote, "--url", &url, "--token-file", tf], &env).await?;
    assert!(out.status.success(), "cp to the guest: {}", said(&out));
    assert_eq!(
        guest_sha256(&c, &sid, "/root/x.bin").await?,
        sha256_hex(&data),
        "the copy in the guest"
    );

    let back = d[2].join("back.bin");
    let back_s = back.to_str().context("a UTF-8 temp path")?;
    let out = cp(&[&remote, back_s, "--url", &url, "--token-file", tf], &env).await?;
    assert!(out.status.success(), "cp from the guest: {}", said(&out));
    assert_same_bytes(&std::fs::read(&back)?, &data, "the copy back");

    // Neither side is SESSION:PATH.
    let out = cp(&["a", "b", "--url", &url, "--token-file", tf], &env).await?;
    assert!(!out.status.success(), "cp a b succeeded: {}", said(&out));
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(
        err.contains("session"),
        "says what it needs: {}",
        said(&out)
    );

    // The copies went through the session's tools, and are in its ledger.
    let ev = events(&d[1].join("reviews").join(&sid))?;
    for tool in ["upload", "download"] {
        assert!(
            ev.iter()
                .any(|e| e["tool"] == tool && e["kind"] == "action"),
            "no {tool} in the ledger"
        );
    }
    c.call_ok("session_stop", json!({ "session_id": sid }))
        .await?;
    Ok(())
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)?.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p)?);
        } else {
            out.push(p);
        }
    }
    Ok(out)
}
