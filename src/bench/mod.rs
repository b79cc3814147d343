//! `deskvm bench`: the numbers in BENCHMARKS.md, measured through a real MCP client against the
//! real server and guest, so they include everything an agent would wait for.
//!
//! [`run`] starts the bench's server on directories of its own and runs the parts in order:
//! the agent's basic actions ([`actions`]), the review ledger's cost ([`ledger`]), then the
//! comparisons beside them (Docker, baselines, a remote engine, the live view, reclaim,
//! checkpoints, density, HTTP). The live view's rows drive headless Chromium through the
//! `deskvm-devtools` test crate, so they are built only with `--features devtools`.

mod actions;
mod baselines;
mod checkpoint;
mod density;
mod disk;
mod images;
mod ledger;
mod remote;
mod report;
mod starts;
mod transport;
mod typing;
#[cfg(feature = "devtools")]
mod view;
mod ways;

pub(crate) use report::{metric, ms, pct, record, summary, METRICS};

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::json;

use crate::client::Client;

/// The flags of `deskvm bench` (flattened into the CLI: this is their one list), and what the CLI
/// passes on from its global flags.
#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// The guest image the sessions run (the figures in BENCHMARKS.md before issue 23 are
    /// `minimal`'s, today's guest then).
    #[arg(long, default_value = "minimal")]
    pub image: String,
    /// Also measure these images side by side (comma-separated, e.g. minimal,workstation):
    /// ready-state size, start to first screenshot, one idle session's PSS and CPU, and on
    /// images with the applications Firefox (cold and forked) and LibreOffice Calc.
    #[arg(long, value_delimiter = ',')]
    pub images: Vec<String>,
    /// Cold application launches measured per image with --images.
    #[arg(long, default_value_t = 2)]
    pub app_runs: usize,
    /// Session starts measured (1 s apart), on the Docker backend too when it is there
    #[arg(long, default_value_t = 10)]
    pub starts: usize,
    #[arg(long, default_value_t = 50)]
    pub shots: usize,
    #[arg(long, default_value_t = 30)]
    pub clicks: usize,
    /// Random printable characters typed and read back, by one guest and by two at once
    #[arg(long, default_value_t = 10_000)]
    pub chars: usize,
    /// Also measure one cold boot (about a minute under TCG).
    #[arg(long)]
    pub cold: bool,
    /// Actions in the scripted session that measures the review ledger (0 skips it).
    #[arg(long, default_value_t = 100)]
    pub ledger_actions: usize,
    /// Timed `reclaim` reports, on this cache and on a made-up one with 8 images (0 skips).
    #[arg(long, default_value_t = 20)]
    pub reclaim_runs: usize,
    /// Checkpoints, restores and forks measured (0 skips).
    #[arg(long, default_value_t = 5)]
    pub checkpoints: usize,
    /// Idle sessions started at most to measure density: until their summed PSS reaches
    /// --budget-gib (0 skips); beside 4 private-memory sessions.
    #[arg(long, default_value_t = 64)]
    pub density: usize,
    #[arg(long, default_value_t = 16)]
    pub budget_gib: u64,
    /// Live viewers (headless Chromium on session_view links) attached while screenshots
    /// are measured again, beside none; 0 skips the live view.
    #[arg(long, default_value_t = 2)]
    pub viewers: usize,
    /// Upload/download round trips of an 8 MiB file, and page fetches through a forward and
    /// through the allowlist proxy (0 skips both).
    #[arg(long, default_value_t = 5)]
    pub transfers: usize,
    /// Also write every figure (p50/p95/min/max, n, ratios) as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// `http` adds screenshots over streamable HTTP beside stdio, and --http-clients
    /// clients at once.
    #[arg(long, default_value = "stdio", value_parser = ["stdio", "http"])]
    pub transport: String,
    #[arg(long, default_value_t = 4)]
    pub http_clients: usize,
    /// Also measure this engine (`--engine` syntax, e.g. from `tools/test-engine.sh start`)
    /// beside this host's: image push, starts, screenshots, clicks, typing.
    #[arg(long)]
    pub remote_engine: Option<String>,
    /// Leave out the baselines (raw QMP and the peers' Xvfb + xdotool + ImageMagick stack);
    /// without this flag a missing baseline tool is an error.
    #[arg(long)]
    pub no_baselines: bool,
    // From the global flags, set by the CLI: what `deskvm serve` is started with, and whether
    // the remote engine may be plain tcp://.
    #[arg(skip)]
    pub server_args: Vec<String>,
    #[arg(skip)]
    pub insecure_engine: bool,
}

impl Options {
    /// With `--transport http`: compare stdio with streamable HTTP, this many clients at once.
    fn http_clients(&self) -> Option<usize> {
        (self.transport == "http").then_some(self.http_clients)
    }

    /// Measure the baselines (raw QMP, the peers' stack) beside deskvm; their tools missing is
    /// an error, found before anything runs.
    fn baselines(&self) -> bool {
        !self.no_baselines
    }
}

/// Where the bench's servers keep their reviews, sessions and checkpoints: directories of its
/// own, removed at the end, so its disk figures count only its own sessions and it leaves
/// nothing behind but the image store's artifacts.
struct Dirs {
    data: PathBuf,
    runtime: PathBuf,
    state: PathBuf,
}

impl Dirs {
    fn new() -> Dirs {
        let tmp = |prefix: &str| {
            std::env::temp_dir().join(format!("deskvm-bench{prefix}-{}", std::process::id()))
        };
        Dirs {
            data: tmp(""),
            runtime: tmp("-rt"),
            state: tmp("-st"),
        }
    }

    /// The environment of every server of the run (the main one and those compared beside it).
    fn env(&self) -> [(&'static str, String); 4] {
        let s = |p: &Path| p.to_string_lossy().into_owned();
        [
            ("RUST_LOG", "warn,qapi=error".into()),
            ("DESKVM_DATA_DIR", s(&self.data)),
            ("DESKVM_RUNTIME_DIR", s(&self.runtime)),
            ("DESKVM_STATE_DIR", s(&self.state)),
        ]
    }

    fn remove(&self) {
        for dir in [&self.data, &self.runtime, &self.state] {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

pub async fn run(o: Options) -> Result<()> {
    if o.baselines() {
        baselines::missing_peer_tools()?;
    }
    let exe = std::env::current_exe()?;
    let most = o.density.max(4).to_string();
    let mut args: Vec<&str> = o.server_args.iter().map(String::as_str).collect();
    args.extend(["--max-sessions", &most]);
    let dirs = Dirs::new();
    let owned = dirs.env();
    let mut env: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // Every server the bench starts (stdio, HTTP, Docker, density) runs this image.
    env.push(("DESKVM_IMAGE", &o.image));
    let client = Client::spawn(&exe, &args, &env).await?;
    let result = run_parts(&client, &o, &exe, &args, &env).await;
    client.close().await?;
    dirs.remove();
    if let (Ok(()), Some(path)) = (&result, &o.json) {
        write_json(path, &o)?;
    }
    result
}

/// Every part of the run in order; the first failure ends it.
async fn run_parts(
    client: &Client,
    o: &Options,
    exe: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> Result<()> {
    if !o.images.is_empty() {
        images::measure(client, &o.images, o.starts, o.app_runs).await?;
    }
    actions::measure(client, o).await?;
    if o.transfers > 0 {
        ways::transfers(client, o.transfers).await?;
        ways::proxy_overhead(exe, env, o.transfers * 4).await?;
    }
    starts::docker_beside(exe, env, o.starts, o.chars).await?;
    if o.baselines() {
        baselines::measure(o).await?;
    }
    if let Some(engine) = &o.remote_engine {
        let r = remote::Remote {
            engine,
            insecure: o.insecure_engine,
            starts: o.starts,
            shots: o.shots,
            clicks: o.clicks,
            chars: o.chars.min(4000),
        };
        remote::compare(exe, env, &r).await?;
    }
    if o.viewers > 0 {
        // Beside the main figures: a host without Chromium (or a build without the DevTools
        // client) still gets the rest.
        if let Err(e) = live_view(client, o).await {
            println!("{:<38} not measured: {e:#}", "live view");
            record("live view", json!({ "error": format!("{e:#}") }));
        }
    }
    if o.reclaim_runs > 0 {
        disk::reclaim_report_time(client, o.reclaim_runs).await?;
    }
    if o.checkpoints > 0 {
        checkpoint::measure(client, o.checkpoints).await?;
    }
    if o.density > 0 {
        let base: Vec<&str> = o.server_args.iter().map(String::as_str).collect();
        let budget = density::cap_budget(o.budget_gib * 1024);
        let (shared, private) =
            density::compare(client, exe, &base, env, o.density, budget).await?;
        density::print(&shared, &private, o.density, budget);
    }
    if let Some(clients) = o.http_clients() {
        transport::compare(client, args, env, o.shots.max(10), clients).await?;
    }
    Ok(())
}

/// The live view's rows: they drive headless Chromium, so they need the DevTools client.
async fn live_view(client: &Client, o: &Options) -> Result<()> {
    #[cfg(feature = "devtools")]
    return view::measure(client, o.viewers, o.shots, (o.clicks / 3).max(5)).await;
    #[cfg(not(feature = "devtools"))]
    {
        let _ = (client, o);
        anyhow::bail!(
            "the view rows need a build with --features devtools \
             (cargo build --release --features devtools)"
        )
    }
}

/// `--json`: every figure of the run, with what it ran on.
fn write_json(path: &Path, o: &Options) -> Result<()> {
    let run = json!({
        "format": "deskvm-bench/1",
        "deskvm": env!("CARGO_PKG_VERSION"),
        "unix_time": crate::storage::owner::unix_now(),
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "server_args": o.server_args,
        "metrics": *METRICS.lock().expect("metrics poisoned"),
    });
    std::fs::write(path, serde_json::to_vec_pretty(&run)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("figures written to {}", path.display());
    Ok(())
}

/// The id of a session `session_start` answered with.
pub(crate) fn session_id(info: &serde_json::Value) -> Result<String> {
    Ok(info["session_id"]
        .as_str()
        .context("no session_id")?
        .to_string())
}
