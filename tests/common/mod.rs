#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
pub mod browser;
pub mod engine;
pub mod net;
pub mod python;
pub mod view;

use deskvm::client::Client;
use serde_json::{json, Value};

/// A server with its own empty state (runtime dir, data dir, and a state root for checkpoints
/// inside the data dir: see [`state_env`]) and the shared image store, the only thing tests
/// share. Dropping it removes its dirs; a dropped client ends the server, which stops its
/// sessions.
pub struct Server {
    pub client: Client,
    pub runtime: PathBuf,
    pub data: PathBuf,
    _dirs: TempDirs,
}

impl Server {
    /// The state root the server keeps its checkpoints in.
    pub fn state(&self) -> PathBuf {
        state_of(&self.data)
    }
}

/// A test's state root lives in its data dir, so servers given the same dirs (a restart)
/// share it and nothing outside the test's own dirs is ever used.
pub fn state_of(data: &Path) -> PathBuf {
    data.join("state")
}

/// The environment that points a deskvm process at a test's own state: its runtime dir, its
/// data dir and its state root. Every process a test spawns gets it.
/// Tests that need no applications run the `minimal` image (`DESKVM_IMAGE`); the workstation
/// tests name theirs.
pub fn state_env(runtime: &Path, data: &Path) -> [(&'static str, PathBuf); 4] {
    [
        ("DESKVM_RUNTIME_DIR", runtime.to_path_buf()),
        ("DESKVM_DATA_DIR", data.to_path_buf()),
        ("DESKVM_STATE_DIR", state_of(data)),
        ("DESKVM_IMAGE", "minimal".into()),
    ]
}

/// Removes the server's directories when the test is done with them, however it ends.
pub struct TempDirs(Vec<PathBuf>);

impl Drop for TempDirs {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

pub async fn server() -> Result<Server> {
    server_with(&["--backend", "local"]).await
}

fn temp_dir(kind: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "dv{kind}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

pub async fn server_with(args: &[&str]) -> Result<Server> {
    let (runtime, data) = (temp_dir("t")?, temp_dir("d")?);
    let mut s = server_in(args, &runtime, &data).await?;
    s._dirs = TempDirs(vec![runtime, data]);
    Ok(s)
}

/// [`state_env`] as the string pairs `Client::spawn` and `HttpServer::spawn` take.
pub struct Env(Vec<(&'static str, String)>);

impl Env {
    pub fn of(runtime: &Path, data: &Path) -> Env {
        Env(state_env(runtime, data)
            .into_iter()
            .map(|(k, v)| (k, v.to_string_lossy().into_owned()))
            .collect())
    }

    pub fn pairs(&self) -> Vec<(&str, &str)> {
        self.0.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }
}

/// A server on directories the caller owns (shared with another server, or kept after it).
pub async fn server_in(args: &[&str], runtime: &Path, data: &Path) -> Result<Server> {
    let env = Env::of(runtime, data);
    let client = Client::spawn(Path::new(env!("CARGO_BIN_EXE_deskvm")), args, &env.pairs()).await?;
    Ok(Server {
        client,
        _dirs: TempDirs(Vec::new()),
        runtime: runtime.to_path_buf(),
        data: data.to_path_buf(),
    })
}

/// Directories removed when the returned guard drops.
pub fn temp_dirs(kinds: &[&str]) -> Result<(Vec<PathBuf>, TempDirs)> {
    let dirs: Vec<PathBuf> = kinds.iter().map(|k| temp_dir(k)).collect::<Result<_>>()?;
    Ok((dirs.clone(), TempDirs(dirs)))
}

/// The pid of the server that owns a session, from the owner marker of its runtime dir.
pub fn owner_pid(runtime: &Path, sid: &str) -> Result<i32> {
    let marker = std::fs::read_to_string(runtime.join("s").join(sid).join(".deskvm-owned"))?;
    let v: Value = serde_json::from_str(&marker)?;
    Ok(v["pid"].as_i64().context("the marker names its pid")? as i32)
}

/// `kill -9` of a server, as a crash would do it; its sessions' VMs are left behind.
pub fn kill_9(pid: i32) {
    // SAFETY: kill has no memory-safety preconditions; the pid is a server this test spawned.
    assert_eq!(
        unsafe { libc::kill(pid, libc::SIGKILL) },
        0,
        "kill -9 {pid}"
    );
}

/// Waits until a killed process is gone (or a zombie), so the next step judges a dead server.
pub async fn wait_dead(pid: i32) {
    for _ in 0..100 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.is_empty() || stat.contains(") Z") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("process {pid} survived kill -9");
}

/// Runs `deskvm <args>` with the given directories, returns its exit code and parsed stdout
/// (JSON when `--json` is among the args).
pub fn cli<P: AsRef<std::ffi::OsStr>>(
    args: &[&str],
    env: &[(&str, P)],
) -> Result<(i32, Value, String)> {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_deskvm"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let v = if args.contains(&"--json") {
        serde_json::from_str(&stdout)
            .with_context(|| format!("deskvm {args:?} printed no JSON: {stdout}\n{stderr}"))?
    } else {
        Value::Null
    };
    Ok((out.status.code().unwrap_or(-1), v, stderr))
}

pub fn sid(info: &Value) -> String {
    info["session_id"]
        .as_str()
        .expect("session_start returns session_id")
        .to_string()
}

pub async fn start(client: &Client) -> Result<String> {
    let info = client.call_ok("session_start", json!({})).await.context(
        "session_start failed: the guest image and ready state come from `deskvm setup` (run by .ci/run)",
    )?;
    assert_eq!(
        info["startup"], "ready_state",
        "sessions must resume the ready state: {info}"
    );
    Ok(sid(&info))
}

/// Runs a command in the guest and returns stdout.
pub async fn guest(client: &Client, sid: &str, command: &str) -> Result<String> {
    let out = client
        .call_ok("exec", json!({ "session_id": sid, "command": command }))
        .await?;
    Ok(out["stdout"].as_str().unwrap_or_default().to_string())
}

/// Polls a guest file until it has at least `min_len` bytes (typing lands asynchronously).
pub async fn read_guest_file(
    client: &Client,
    sid: &str,
    path: &str,
    min_len: usize,
) -> Result<String> {
    let mut last = String::new();
    for _ in 0..40 {
        last = guest(client, sid, &format!("cat {path} 2>/dev/null")).await?;
        if last.len() >= min_len {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(last)
}

pub async fn wait_stable(client: &Client, sid: &str) -> Result<()> {
    client
        .call_ok(
            "wait",
            json!({ "session_id": sid, "ms": 200, "until_stable": true }),
        )
        .await?;
    Ok(())
}

/// The tool error's structured kind and message.
pub async fn tool_error(client: &Client, tool: &str, args: Value) -> Result<(String, String)> {
    let r = client.call(tool, args).await?;
    assert_eq!(
        r.is_error,
        Some(true),
        "{tool} should have failed: {}",
        deskvm::client::text_of(&r)
    );
    let s = r
        .structured_content
        .expect("errors carry structured content");
    Ok((
        s["error"].as_str().unwrap_or_default().into(),
        s["message"].as_str().unwrap_or_default().into(),
    ))
}

/// The title of the focused window.
pub async fn active_window(client: &Client, sid: &str) -> Result<String> {
    guest(
        client,
        sid,
        // xfwm4 lists the active window then 0x0: take the first id.
        "xprop -id $(xprop -root _NET_ACTIVE_WINDOW | sed 's/.*# \\(0x[0-9a-f]*\\).*/\\1/') WM_NAME 2>/dev/null",
    )
    .await
}

/// Opens a second terminal titled "decoy" over the lower right of the screen and waits until it
/// has the focus, so that a later click on the first terminal has to move the focus.
pub async fn open_decoy(client: &Client, sid: &str) -> Result<()> {
    guest(
        client,
        sid,
        "xterm -geometry 40x8+820+560 -title decoy >/dev/null 2>&1 &",
    )
    .await?;
    let mut active = String::new();
    for _ in 0..40 {
        active = active_window(client, sid).await?;
        if active.contains("decoy") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        active.contains("decoy"),
        "the decoy window should have the focus, active: {active:?}"
    );
    wait_stable(client, sid).await
}

/// The first click of a session must land: a decoy window takes the focus, the first click goes
/// to the terminal, and only then does typing reach the terminal's `cat`. 245 printable ASCII
/// characters (all 95, then random) must be read back byte-exact from inside the guest, and a key
/// combination (ctrl+u) must act as one.
pub async fn first_click_and_typing(c: &Client, sid: &str) -> Result<()> {
    use rand::Rng;

    let (png, meta) = c.screenshot(sid, json!({})).await?;
    let img = image::load_from_memory(&png)?;
    assert_eq!((img.width(), img.height()), (1280, 800));
    assert_eq!(
        (meta["width"].as_u64(), meta["height"].as_u64()),
        (Some(1280), Some(800))
    );

    open_decoy(c, sid).await?;

    // The first pointer input of the session.
    c.call_ok("click", json!({ "session_id": sid, "x": 300, "y": 250 }))
        .await?;
    c.call_ok(
        "type",
        json!({ "session_id": sid, "text": "cat > /tmp/typed.txt\n" }),
    )
    .await?;
    let mut rng = rand::rng();
    let mut text: String = (0x20u8..=0x7e).map(|b| b as char).collect();
    text.extend((0..150).map(|_| rng.random_range(0x20u8..=0x7e) as char));
    assert!(text.len() >= 200);
    c.call_ok(
        "type",
        json!({ "session_id": sid, "text": format!("{text}\n") }),
    )
    .await?;
    c.call_ok("key", json!({ "session_id": sid, "keys": "ctrl+d" }))
        .await?;
    let back = read_guest_file(c, sid, "/tmp/typed.txt", text.len() + 1).await?;
    assert_eq!(
        back,
        format!("{text}\n"),
        "typed text must arrive byte-exact"
    );

    // A key combination: ctrl+u clears the half-typed line, so only the second command runs.
    c.call_ok("type", json!({ "session_id": sid, "text": "echo wrong" }))
        .await?;
    c.call_ok("key", json!({ "session_id": sid, "keys": "ctrl+u" }))
        .await?;
    c.call_ok(
        "type",
        json!({ "session_id": sid, "text": "echo combo-ok > /tmp/combo.txt" }),
    )
    .await?;
    c.call_ok("key", json!({ "session_id": sid, "keys": "Return" }))
        .await?;
    let combo = read_guest_file(c, sid, "/tmp/combo.txt", 1).await?;
    assert_eq!(combo, "combo-ok\n");

    // The ready state was saved minutes or days ago; the guest clock must have been set to now.
    let mut drift = i64::MAX;
    for _ in 0..20 {
        let guest_now: i64 = guest(c, sid, "date +%s").await?.trim().parse()?;
        let host_now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs() as i64;
        drift = (guest_now - host_now).abs();
        if drift <= 30 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(drift <= 30, "guest clock is {drift} s away from the host's");
    Ok(())
}

/// The events of a review timeline (a ledger or an exported bundle).
pub fn events(dir: &Path) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(dir.join("timeline.jsonl"))?;
    text.lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("bad line {l}")))
        .collect()
}

/// Asserts the events are numbered 1..n with no gap.
pub fn seqs_are_gapless(ev: &[Value]) {
    let seqs: Vec<u64> = ev.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=ev.len() as u64).collect::<Vec<_>>(),
        "seq must be 1..n"
    );
}

/// CPU hogs beside a test (`yes > /dev/null`, one per process), as another build or test on
/// the machine would be: input must hold under load. Tests of one binary that run at the same
/// time share them; the last guard dropped kills them.
pub struct CpuHogs(Vec<std::process::Child>);

impl Drop for CpuHogs {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

static HOGS: std::sync::Mutex<std::sync::Weak<CpuHogs>> =
    std::sync::Mutex::new(std::sync::Weak::new());

pub fn cpu_hogs(n: usize) -> Result<std::sync::Arc<CpuHogs>> {
    let mut shared = HOGS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(hogs) = shared.upgrade() {
        return Ok(hogs);
    }
    let mut hogs = CpuHogs(Vec::with_capacity(n));
    for _ in 0..n {
        let child = std::process::Command::new("yes")
            .stdout(std::process::Stdio::null())
            .spawn()
            .context("starting a CPU hog (yes)")?;
        hogs.0.push(child);
    }
    let hogs = std::sync::Arc::new(hogs);
    *shared = std::sync::Arc::downgrade(&hogs);
    Ok(hogs)
}
