//! Unicode typing beside ASCII in the same run: a random mix of accented Latin, Greek, CJK,
//! symbols and emoji (more than 16 distinct, so the spare keys are remapped mid-text).

use std::time::{Duration, Instant};

use anyhow::Result;
use rand::Rng;
use serde_json::json;

use crate::client::Client;

/// 16 distinct characters: one keymap mapping for the whole text.
pub const POOL_16: &str = "äöüßéèêçñøåæΩαβγ";
/// 40 distinct characters: mappings of 8, alternating, remapped as the text goes.
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
    client
        .call_ok("key", json!({ "session_id": sid, "keys": "ctrl+d" }))
        .await?;
    let back = read_back(client, sid, "/tmp/bench-u.txt", n).await?;
    let chars = n + 1;
    super::record(
        &format!("type (Unicode, {} distinct)", pool.len()),
        json!({ "unit": "chars/s", "value": chars as f64 / took.as_secs_f64(), "exact": back == expected }),
    );
    println!(
        "{:<38} {chars} chars in {:.2} s = {:.1} chars/s, read back {}",
        format!("type (Unicode, {} distinct)", pool.len()),
        took.as_secs_f64(),
        chars as f64 / took.as_secs_f64(),
        if back == expected {
            "byte-exact"
        } else {
            "DIFFERENT"
        },
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

/// A file typed into the guest, once it holds more than `min_chars` characters (typing lands
/// asynchronously; gives up after 5 s and returns what is there).
pub async fn read_back(client: &Client, sid: &str, path: &str, min_chars: usize) -> Result<String> {
    let mut back = String::new();
    for _ in 0..20 {
        let out = client
            .call_ok(
                "exec",
                json!({ "session_id": sid, "command": format!("cat {path}") }),
            )
            .await?;
        back = out["stdout"].as_str().unwrap_or_default().to_string();
        if back.chars().count() > min_chars {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(back)
}
