//! Typing with flow control (`vm::typing`): two guests typing long random text at once both
//! read it back exactly, Num Lock (the confirmation key) ends as it was, and keys typed after
//! a long text still arrive.

mod common;

use anyhow::Result;
use common::*;
use rand::Rng;
use serde_json::json;

const CHARS: usize = 4000;

async fn num_lock(c: &deskvm::client::Client, sid: &str) -> Result<String> {
    let q = guest(c, sid, "DISPLAY=:0 xset q | grep -o 'Num Lock: *[a-z]*'").await?;
    Ok(q.split_whitespace().last().unwrap_or_default().to_string())
}

/// Types `CHARS` random printable characters into `cat` (non-canonical: no line limit) and
/// returns what was typed and what the guest's file holds.
async fn type_long(c: &deskvm::client::Client, sid: &str) -> Result<(String, String)> {
    c.call_ok("click", json!({ "session_id": sid, "x": 300, "y": 250 }))
        .await?;
    c.call_ok(
        "type",
        json!({ "session_id": sid, "text": "stty -icanon; cat > /tmp/long.txt\n" }),
    )
    .await?;
    let mut rng = rand::rng();
    let mut text: String = (0..CHARS)
        .map(|_| rng.random_range(0x20u8..=0x7e) as char)
        .collect();
    text.push('\n');
    c.call_ok("type", json!({ "session_id": sid, "text": text }))
        .await?;
    let back = read_guest_file(c, sid, "/tmp/long.txt", text.len()).await?;
    c.call_ok("key", json!({ "session_id": sid, "keys": "ctrl+c" }))
        .await?;
    c.call_ok(
        "type",
        json!({ "session_id": sid, "text": "stty sane; clear\n" }),
    )
    .await?;
    Ok((text, back))
}

#[tokio::test]
async fn two_guests_type_long_text_at_once_without_losing_a_key() -> Result<()> {
    let s = server().await?;
    let c = &s.client;
    let (a, b) = (start(c).await?, start(c).await?);
    let locks = (num_lock(c, &a).await?, num_lock(c, &b).await?);
    assert!(
        ["on", "off"].contains(&locks.0.as_str()),
        "xset q shows no Num Lock state: {locks:?}"
    );
    let (ra, rb) = tokio::join!(type_long(c, &a), type_long(c, &b));
    for (sid, (text, back)) in [(&a, ra?), (&b, rb?)] {
        let first = back
            .bytes()
            .zip(text.bytes())
            .position(|(x, y)| x != y)
            .unwrap_or(back.len().min(text.len()));
        assert!(
            back == text,
            "session {sid}: {} of {} characters came back; first difference at {first}",
            back.len(),
            text.len()
        );
    }
    assert_eq!(
        (num_lock(c, &a).await?, num_lock(c, &b).await?),
        locks,
        "Num Lock must end as it was"
    );
    // One character: an odd number of confirmation taps, evened out at the end.
    c.call_ok(
        "type",
        json!({ "session_id": a, "text": "echo one > /tmp/one.txt\n" }),
    )
    .await?;
    assert_eq!(read_guest_file(c, &a, "/tmp/one.txt", 4).await?, "one\n");
    c.call_ok("type", json!({ "session_id": a, "text": "x" }))
        .await?;
    c.call_ok("key", json!({ "session_id": a, "keys": "ctrl+u" }))
        .await?;
    assert_eq!(num_lock(c, &a).await?, locks.0, "Num Lock after one key");
    for id in [&a, &b] {
        c.call_ok("session_stop", json!({ "session_id": id }))
            .await?;
    }
    Ok(())
}
