//! Typing: random printable ASCII read back from inside the guest (one guest, then two at
//! once), and Unicode beside it: a random mix of accented Latin, Greek, CJK, symbols and emoji
//! (16 and 40 distinct: the rate should not depend on how many).

use std::time::{Duration, Instant};

use anyhow::Result;
use rand::Rng;
use serde_json::json;

use crate::client::Client;
use crate::session::boot::TERMINAL_POINT;

/// Characters per `type` call (the tool takes at most 4096).
const CALL_CHARS: usize = 4000;

/// One run of typed text and what came back.
pub struct Typed {
    pub chars: usize,
    /// Until the last `type` call returned.
    pub sent: Duration,
    /// Until the guest's file held every character (or stopped growing).
    pub arrived: Duration,
    /// Characters missing, extra or out of place.
    pub mismatched: usize,
}

impl Typed {
    pub fn rate(&self) -> f64 {
        self.chars as f64 / self.arrived.as_secs_f64()
    }
}

/// Types `n` random printable ASCII characters and a newline into `cat` in the session's
/// terminal (echo on, non-canonical so no line limit applies) and reads the file back.
pub async fn ascii(client: &Client, sid: &str, n: usize) -> Result<Typed> {
    let file = "/tmp/bench-ascii.txt";
    client
        .call_ok(
            "click",
            json!({ "session_id": sid, "x": TERMINAL_POINT.0, "y": TERMINAL_POINT.1 }),
        )
        .await?;
    client
        .call_ok(
            "type",
            json!({ "session_id": sid, "text": format!("stty -icanon; cat > {file}\n") }),
        )
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut rng = rand::rng();
    let mut text: String = (0..n)
        .map(|_| rng.random_range(0x20u8..=0x7e) as char)
        .collect();
    text.push('\n');
    let t = Instant::now();
    for chunk in text.as_bytes().chunks(CALL_CHARS) {
        let chunk = std::str::from_utf8(chunk)?;
        client
            .call_ok("type", json!({ "session_id": sid, "text": chunk }))
            .await?;
    }
    let sent = t.elapsed();
    let back = read_back(client, sid, file, text.len()).await?;
    let arrived = t.elapsed();
    // Ends `cat` and gives the terminal its line discipline back.
    client
        .call_ok("key", json!({ "session_id": sid, "keys": "ctrl+c" }))
        .await?;
    client
        .call_ok(
            "type",
            json!({ "session_id": sid, "text": "stty sane; clear\n" }),
        )
        .await?;
    let mismatched = back
        .bytes()
        .zip(text.bytes())
        .filter(|(a, b)| a != b)
        .count()
        + back.len().abs_diff(text.len());
    Ok(Typed {
        chars: text.len(),
        sent,
        arrived,
        mismatched,
    })
}

/// Records and prints one typing figure.
pub fn report(name: &str, runs: &[Typed]) {
    let chars: usize = runs.iter().map(|r| r.chars).sum();
    let mismatched: usize = runs.iter().map(|r| r.mismatched).sum();
    let slowest = runs.iter().map(Typed::rate).fold(f64::INFINITY, f64::min);
    let sent = runs
        .iter()
        .map(|r| r.chars as f64 / r.sent.as_secs_f64())
        .fold(f64::INFINITY, f64::min);
    super::record(
        name,
        json!({ "unit": "chars/s", "value": slowest, "sent_chars_per_s": sent,
                "chars": chars, "guests": runs.len(), "mismatched": mismatched }),
    );
    println!(
        "{name:<38} {slowest:.1} chars/s typed and read back ({sent:.1} sent) per guest, {} guest(s); {chars} chars, {} mismatched",
        runs.len(),
        mismatched,
    );
}

/// 16 distinct characters: one keymap mapping for the whole text.
pub const POOL_16: &str = "äöüßéèêçñøåæΩαβγ";
/// 40 distinct characters: still one mapping (up to 100 fit).
pub const POOL_40: &str = "äöüßéèêçñøåæÀÉÖΩαβγδλμπσφ東京日本語中文한국→←★✓😀🎉";

pub async fn unicode(client: &Client, sid: &str, n: usize, pool: &str) -> Result<()> {
    client
        .call_ok(
            "type",
            json!({ "session_id": sid, "text": "cat > /tmp/bench-u.txt\n" }),
        )
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pool: Vec<char> = pool.chars().collect();
    let mut rng = rand::rng();
    let text: String = (0..n)
        .map(|i| {
            if i % 5 == 4 {
                ' '
            } else {
                pool[rng.random_range(0..pool.len())]
            }
        })
        .collect();
    let expected = format!("{text}\n");
    let t = Instant::now();
    client
        .call_ok("type", json!({ "session_id": sid, "text": expected }))
        .await?;
    let took = t.elapsed();
    // The key that follows waits until the window manager has taken the guest's keymap back in.
    let t = Instant::now();
    client
        .call_ok("key", json!({ "session_id": sid, "keys": "ctrl+d" }))
        .await?;
    let next_key = t.elapsed();
    let back = read_back(client, sid, "/tmp/bench-u.txt", n + 1).await?;
    let chars = n + 1;
    super::record(
        &format!("type (Unicode, {} distinct)", pool.len()),
        json!({ "unit": "chars/s", "value": chars as f64 / took.as_secs_f64(), "exact": back == expected,
                "next_key_ms": super::ms(next_key) }),
    );
    println!(
        "{:<38} {chars} chars in {:.2} s = {:.1} chars/s, read back {}; the next key took {:.0} ms",
        format!("type (Unicode, {} distinct)", pool.len()),
        took.as_secs_f64(),
        chars as f64 / took.as_secs_f64(),
        if back == expected {
            "byte-exact"
        } else {
            "DIFFERENT"
        },
        super::ms(next_key),
    );
    if back != expected {
        let at = back
            .chars()
            .zip(expected.chars())
            .position(|(a, b)| a != b)
            .unwrap_or(back.chars().count().min(expected.chars().count()));
        let near = |s: &str| {
            s.chars()
                .skip(at.saturating_sub(3))
                .take(8)
                .collect::<String>()
        };
        println!(
            "{:<38} first difference at char {at}: typed {:?}, read {:?}",
            "",
            near(&expected),
            near(&back)
        );
    }
    Ok(())
}

/// A file typed into the guest, once it holds at least `min_chars` characters (typing lands
/// asynchronously); gives up when it has not grown for 5 s and returns what is there.
pub async fn read_back(client: &Client, sid: &str, path: &str, min_chars: usize) -> Result<String> {
    let mut back = String::new();
    let mut grew = Instant::now();
    loop {
        let out = client
            .call_ok(
                "exec",
                json!({ "session_id": sid, "command": format!("cat {path}") }),
            )
            .await?;
        let now = out["stdout"].as_str().unwrap_or_default().to_string();
        if now.len() != back.len() {
            grew = Instant::now();
        }
        back = now;
        if back.chars().count() >= min_chars || grew.elapsed() > Duration::from_secs(5) {
            return Ok(back);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
