//! Headless Chromium driven over the DevTools protocol (one WebSocket, commands by id): how the
//! bench puts live viewers on a session and the tests act as the person in front of one.
//! Debian's `chromium` (installed by `deskvm setup` for the tests and the bench).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value>>>>>;

pub struct Browser {
    child: Child,
    profile: PathBuf,
    out: mpsc::UnboundedSender<String>,
    pending: Pending,
    next: Arc<AtomicU64>,
}

/// One tab.
pub struct Page<'a> {
    browser: &'a Browser,
    session: String,
}

/// Headless, and quiet: no sandbox (tests run as root), no GPU, nothing fetched from the network.
pub const HEADLESS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
];

pub fn chromium() -> Result<PathBuf> {
    for p in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(p).is_file() {
            return Ok(p.into());
        }
    }
    bail!("Chromium is missing: `deskvm setup` installs it (apt-get install chromium)")
}

impl Browser {
    /// A new headless Chromium with its own profile, windows of `width` x `height`.
    pub async fn launch(width: u32, height: u32) -> Result<Browser> {
        let profile = std::env::temp_dir().join(format!("dvcdp-{}", rand::random::<u64>()));
        let mut child = Command::new(chromium()?)
            .args(HEADLESS)
            .args(["--remote-debugging-port=0", "--remote-allow-origins=*"])
            .arg(format!("--window-size={width},{height}"))
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting chromium")?;
        let stderr = child.stderr.take().context("chromium stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let url = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(u) = line.split("DevTools listening on ").nth(1) {
                    return Ok(u.trim().to_string());
                }
            }
            bail!("chromium exited before it listened")
        })
        .await
        .context("chromium did not start its DevTools server in 30 s")??;
        // Keep draining stderr so the browser never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .context("connecting to chromium's DevTools")?;
        let (mut sink, mut stream) = ws.split();
        let (out, mut rx) = mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                if sink.send(Message::text(m)).await.is_err() {
                    break;
                }
            }
        });
        let pending: Pending = Arc::default();
        let p = pending.clone();
        tokio::spawn(async move {
            while let Some(Ok(m)) = stream.next().await {
                let Ok(text) = m.to_text() else { continue };
                let Ok(v) = serde_json::from_str::<Value>(text) else {
                    continue;
                };
                let Some(id) = v["id"].as_u64() else { continue };
                if let Some(tx) = p.lock().expect("cdp pending poisoned").remove(&id) {
                    let r = match v.get("error") {
                        Some(e) => Err(anyhow!("DevTools error: {e}")),
                        None => Ok(v["result"].clone()),
                    };
                    let _ = tx.send(r);
                }
            }
        });
        Ok(Browser {
            child,
            profile,
            out,
            pending,
            next: Arc::new(AtomicU64::new(1)),
        })
    }

    async fn send(&self, session: Option<&str>, method: &str, params: Value) -> Result<Value> {
        let id = self.next.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .expect("cdp pending poisoned")
            .insert(id, tx);
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = s.into();
        }
        self.out
            .send(msg.to_string())
            .map_err(|_| anyhow!("the DevTools connection is gone"))?;
        tokio::time::timeout(Duration::from_secs(60), rx)
            .await
            .with_context(|| format!("{method}: no answer in 60 s"))?
            .map_err(|_| anyhow!("the DevTools connection is gone"))?
    }

    /// A new tab at `url`.
    pub async fn open(&self, url: &str) -> Result<Page<'_>> {
        let target = self
            .send(None, "Target.createTarget", json!({ "url": url }))
            .await?;
        let id = target["targetId"].as_str().context("targetId")?;
        let attached = self
            .send(
                None,
                "Target.attachToTarget",
                json!({ "targetId": id, "flatten": true }),
            )
            .await?;
        let session = attached["sessionId"].as_str().context("sessionId")?;
        Ok(Page {
            browser: self,
            session: session.to_string(),
        })
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

impl Page<'_> {
    pub async fn call(&self, method: &str, params: Value) -> Result<Value> {
        self.browser.send(Some(&self.session), method, params).await
    }

    /// Closes the tab.
    pub async fn close(self) -> Result<()> {
        let info = self.call("Target.getTargetInfo", json!({})).await?;
        let id = info["targetInfo"]["targetId"]
            .as_str()
            .context("targetId")?;
        self.browser
            .send(None, "Target.closeTarget", json!({ "targetId": id }))
            .await
            .map(|_| ())
    }

    /// Makes this the tab in front: a tab behind others gets no animation frames.
    pub async fn front(&self) -> Result<()> {
        self.call("Page.bringToFront", json!({})).await.map(|_| ())
    }

    /// The value of a JavaScript expression (promises awaited).
    pub async fn eval(&self, expression: &str) -> Result<Value> {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "awaitPromise": true, "returnByValue": true }),
            )
            .await?;
        if let Some(e) = r.get("exceptionDetails") {
            bail!("{expression}: {e}");
        }
        Ok(r["result"]["value"].clone())
    }

    /// Polls `expression` until it is truthy; returns its value.
    pub async fn wait_for(&self, expression: &str, timeout: Duration) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let v = self.eval(expression).await.unwrap_or(Value::Null);
            if !(v.is_null() || v == json!(false) || v == json!(0) || v == json!("")) {
                return Ok(v);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("waited {timeout:?} for `{expression}`");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A left click at (x, y) of the page.
    pub async fn click(&self, x: f64, y: f64) -> Result<()> {
        self.call(
            "Input.dispatchMouseEvent",
            json!({ "type": "mouseMoved", "x": x, "y": y }),
        )
        .await?;
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({ "type": kind, "x": x, "y": y, "button": "left", "buttons": 1, "clickCount": 1 }),
            )
            .await?;
        }
        Ok(())
    }

    /// Types `text` key by key as a keyboard would (a-z, 0-9, space, `-`, `.`, `/`, `>`,
    /// newline).
    pub async fn type_text(&self, text: &str) -> Result<()> {
        for ch in text.chars() {
            let (key, code, vk, shift): (String, String, u32, bool) = match ch {
                'a'..='z' => (
                    ch.into(),
                    format!("Key{}", ch.to_ascii_uppercase()),
                    ch.to_ascii_uppercase() as u32,
                    false,
                ),
                '0'..='9' => (ch.into(), format!("Digit{ch}"), ch as u32, false),
                ' ' => (" ".into(), "Space".into(), 32, false),
                '-' => ("-".into(), "Minus".into(), 189, false),
                '.' => (".".into(), "Period".into(), 190, false),
                '/' => ("/".into(), "Slash".into(), 191, false),
                '>' => (">".into(), "Period".into(), 190, true),
                '\n' => ("Enter".into(), "Enter".into(), 13, false),
                other => bail!("type_text: no key for {other:?}"),
            };
            if shift {
                self.key_event("rawKeyDown", "Shift", "ShiftLeft", 16, None, 0)
                    .await?;
            }
            let text = if ch == '\n' {
                "\r".to_string()
            } else {
                ch.to_string()
            };
            let modifiers = if shift { 8 } else { 0 };
            self.key_event("keyDown", &key, &code, vk, Some(&text), modifiers)
                .await?;
            self.key_event("keyUp", &key, &code, vk, None, modifiers)
                .await?;
            if shift {
                self.key_event("keyUp", "Shift", "ShiftLeft", 16, None, 0)
                    .await?;
            }
        }
        Ok(())
    }

    async fn key_event(
        &self,
        kind: &str,
        key: &str,
        code: &str,
        vk: u32,
        text: Option<&str>,
        modifiers: u32,
    ) -> Result<()> {
        let mut p = json!({ "type": kind, "key": key, "code": code, "windowsVirtualKeyCode": vk, "modifiers": modifiers });
        if let Some(t) = text {
            p["text"] = t.into();
        }
        self.call("Input.dispatchKeyEvent", p).await.map(|_| ())
    }
}
