//! Any Unicode text through `type`, read back byte-exact from inside the guest: a mixed text,
//! one character on every spare key and level (100 distinct), and more distinct characters than
//! one mapping holds. Afterwards the guest's keymap is its own again, a drag right after a
//! Unicode `type` moves the window, and ASCII typing still works. (Its own binary: typing
//! competes badly for CPU with other guests on 2 cores.)

mod common;

use anyhow::Result;
use common::*;
use serde_json::json;

/// `n` distinct characters, none of them ASCII: Greek, Cyrillic, then CJK ideographs.
fn distinct(n: usize) -> String {
    let greek = (0x3b1..=0x3c9)
        .chain(0x391..=0x3a9)
        .filter(|&c| c != 0x3a2 && c != 0x3c2);
    let cyrillic = 0x430..=0x44f;
    greek
        .chain(cyrillic)
        .chain(0x4e00..)
        .filter_map(char::from_u32)
        .take(n)
        .collect()
}

/// Types `text` into `cat` writing `file` and returns what the file holds.
async fn type_into(
    c: &deskvm::client::Client,
    sid: &str,
    file: &str,
    text: &str,
) -> Result<String> {
    c.call_ok(
        "type",
        json!({ "session_id": sid, "text": format!("cat > {file}\n") }),
    )
    .await?;
    c.call_ok("type", json!({ "session_id": sid, "text": text }))
        .await?;
    c.call_ok("key", json!({ "session_id": sid, "keys": "ctrl+d" }))
        .await?;
    read_guest_file(c, sid, file, text.len()).await
}

#[tokio::test]
async fn unicode_text_arrives_byte_exact_and_the_keymap_is_restored() -> Result<()> {
    let s = server().await?;
    let c = &s.client;
    let sid = start(c).await?;
    let keymap = "xmodmap -pm -pke";
    let before = guest(c, &sid, keymap).await?;
    assert!(before.contains("XF86Tools"), "{before}");
    c.call_ok("click", json!({ "session_id": sid, "x": 400, "y": 300 }))
        .await?;
    // ASCII, Latin-1, Greek, CJK, an arrow, an emoji, a combining accent.
    let text = "Müller café Ωμέγα 東京 → 😀 e\u{301} ÀÁÂÃÄÅÆÇÈÉ done\n";
    let back = type_into(c, &sid, "/tmp/u.txt", text).await?;
    assert_eq!(back, text, "typed text must arrive byte-exact");
    // Every spare key on both levels, in one mapping.
    let cap = deskvm::vm::unicode::CAPACITY;
    let all = format!("{} {}\n", distinct(cap), distinct(cap / 2));
    let back = type_into(c, &sid, "/tmp/all.txt", &all).await?;
    assert_eq!(
        back, all,
        "every spare key and level must type its character"
    );
    // More than one mapping holds: remapped as the text goes.
    let many = format!("{}\n", distinct(cap + 30).repeat(2));
    let back = type_into(c, &sid, "/tmp/many.txt", &many).await?;
    assert_eq!(back, many, "text remapped mid-way must arrive byte-exact");
    assert_eq!(
        guest(c, &sid, keymap).await?,
        before,
        "the guest's keymap is restored"
    );

    // A drag right after a Unicode `type` (the window manager is still taking the restored
    // keymap in) moves the terminal by its title bar.
    let at = "xwininfo -name terminal | grep Absolute";
    let xy = |s: &str| -> Vec<i64> {
        s.lines()
            .filter_map(|l| l.rsplit(':').next()?.trim().parse().ok())
            .collect()
    };
    let start_xy = xy(&guest(c, &sid, at).await?);
    c.call_ok("type", json!({ "session_id": sid, "text": "ünï" }))
        .await?;
    c.call_ok(
        "drag",
        json!({ "session_id": sid, "from": {"x": 300, "y": 57}, "to": {"x": 400, "y": 157} }),
    )
    .await?;
    wait_stable(c, &sid).await?;
    let end_xy = xy(&guest(c, &sid, at).await?);
    assert_eq!(
        (end_xy[0] - start_xy[0], end_xy[1] - start_xy[1]),
        (100, 100),
        "dragged by its title bar: {start_xy:?} -> {end_xy:?}"
    );
    // ASCII typing after all that.
    c.call_ok("key", json!({ "session_id": sid, "keys": "ctrl+u" }))
        .await?;
    c.call_ok(
        "type",
        json!({ "session_id": sid, "text": "echo plain-ASCII_1 > /tmp/a.txt\n" }),
    )
    .await?;
    assert_eq!(
        read_guest_file(c, &sid, "/tmp/a.txt", 14).await?,
        "plain-ASCII_1\n"
    );
    assert_eq!(guest(c, &sid, keymap).await?, before);

    let (kind, msg) = tool_error(c, "type", json!({ "session_id": sid, "text": "a\u{7}" })).await?;
    assert_eq!(kind, "invalid_input");
    assert!(msg.contains("U+0007"), "{msg}");
    Ok(())
}
