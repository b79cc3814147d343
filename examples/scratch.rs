use deskvm::client::Client;
use serde_json::json;
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let c = Client::spawn(std::path::Path::new("target/debug/deskvm"), &[], &[]).await?;
    let info = c.call_ok("session_start", json!({})).await?;
    let sid = info["session_id"].as_str().unwrap().to_string();
    println!("{info}");
    for i in 0..3 {
        let (png, m) = c.screenshot(&sid, json!({})).await?;
        std::fs::write(format!("/tmp/sc{i}.png"), png)?;
        println!("{m}");
        let out = c.call_ok("exec", json!({"session_id": sid, "command": format!("xsetroot -solid '#{:02x}0000'", 80*(i+1))})).await?;
        println!("{out}");
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    c.call_ok("session_stop", json!({"session_id": sid})).await?;
    Ok(())
}
