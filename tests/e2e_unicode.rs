//! Any Unicode text through `type`, read back byte-exact from inside the guest, and the guest's
//! keymap as it was afterwards. (Its own binary: typing competes badly for CPU with other
//! guests on 2 cores.)

mod common;

use anyhow::Result;
use common::*;
use serde_json::json;

#[tokio::test]
async fn unicode_text_arrives_byte_exact_and_the_keymap_is_restored() -> Result<()> {
    let s = server().await?;
    let c = &s.client;
    let sid = start(c).await?;
    let codes: Vec<String> = deskvm::vm::unicode::SPARE_KEYS
        .iter()
        .map(|(_, k)| format!("$2 == {k}"))
        .collect();
    let keymap = format!("xmodmap -pke | awk '{}'", codes.join(" || "));
    let keymap = keymap.as_str();
    let before = guest(c, &sid, keymap).await?;
    c.call_ok("click", json!({ "session_id": sid, "x": 400, "y": 300 }))
        .await?;
    c.call_ok(
        "type",
        json!({ "session_id": sid, "text": "cat > /tmp/u.txt\n" }),
    )
    .await?;
    // ASCII, Latin-1, Greek, CJK, an arrow, an emoji, a combining accent, and more than 12
    // distinct non-ASCII characters (more than 16, so the spare keys are remapped mid-text).
    let text = "Müller café Ωμέγα 東京 → 😀 e\u{301} ÀÁÂÃÄÅÆÇÈÉ done\n";
    c.call_ok("type", json!({ "session_id": sid, "text": text }))
        .await?;
    c.call_ok("key", json!({ "session_id": sid, "keys": "ctrl+d" }))
        .await?;
    let back = read_guest_file(c, &sid, "/tmp/u.txt", text.len()).await?;
    assert_eq!(back, text, "typed text must arrive byte-exact");
    let after = guest(c, &sid, keymap).await?;
    assert_eq!(after, before, "the guest's keymap is restored");
    assert!(before.contains("XF86Tools"), "{before}");

    let (kind, msg) = tool_error(c, "type", json!({ "session_id": sid, "text": "a\u{7}" })).await?;
    assert_eq!(kind, "invalid_input");
    assert!(msg.contains("U+0007"), "{msg}");
    Ok(())
}
