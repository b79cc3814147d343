//! A minimal agent-side program: spawn `deskvm serve`, start a desktop, type into the terminal,
//! save a screenshot. Run with `cargo run --release --example mcp_client` after `deskvm setup`.

use std::path::Path;

use deskvm::client::Client;
use serde_json::json;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/deskvm");
    let client = Client::spawn(&bin, &[], &[("RUST_LOG", "warn,qapi=error")]).await?;
    println!("tools: {}", client.tool_names().await?.join(", "));
    let info = client
        .call_ok("session_start", json!({ "width": 1024, "height": 768 }))
        .await?;
    let sid = info["session_id"].as_str().unwrap_or_default().to_string();
    println!("session: {info}");
    client
        .call_ok("click", json!({ "session_id": sid, "x": 300, "y": 200 }))
        .await?;
    client
        .call_ok(
            "type",
            json!({ "session_id": sid, "text": "uname -a; date\n" }),
        )
        .await?;
    client
        .call_ok("wait", json!({ "session_id": sid, "until_stable": true }))
        .await?;
    let (png, meta) = client.screenshot(&sid, json!({ "max_width": 800 })).await?;
    std::fs::write("mcp_client.png", png)?;
    println!("screenshot {meta} saved to mcp_client.png");
    client
        .call_ok("session_stop", json!({ "session_id": sid }))
        .await?;
    client.close().await
}
