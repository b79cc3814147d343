//! `deskvm`: the command line. Parses the flags, turns the global ones into the environment the
//! rest reads, and hands each command to its function here, which calls the CLI room
//! (`deskvm::cli`), the MCP server (`deskvm::mcp`) or the bench (`deskvm::bench`).

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use deskvm::cli::{self, AccelChoice, BackendChoice};
use deskvm::http::{HttpOptions, Tokens, Transport};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum GuestMemory {
    Shared,
    Private,
}

#[derive(Parser)]
#[command(
    name = "deskvm",
    version,
    about = "An MCP server that gives AI agents a real desktop in a QEMU VM"
)]
struct Cli {
    /// Accelerator: auto (probe what really works), kvm or tcg.
    #[arg(long, global = true, env = "DESKVM_ACCEL", default_value = "auto")]
    accel: AccelChoice,
    /// Where sessions run: auto (Docker when the engine answers and the runtime image exists,
    /// else local), docker or local.
    #[arg(long, global = true, env = "DESKVM_BACKEND", default_value = "auto")]
    backend: BackendChoice,
    /// A Docker engine to run sessions on, repeatable (a pool: each session goes to the one
    /// with the most free memory): `local`, `[NAME=]tcp://HOST:PORT[,tls=DIR]` (TLS; DIR holds
    /// ca.pem, cert.pem, key.pem, default DOCKER_CERT_PATH) or `unix:///path`. Engines other
    /// than this host's are reached through the Engine API only; `image push` loads them.
    #[arg(
        long = "engine",
        global = true,
        env = "DESKVM_ENGINE",
        value_delimiter = ';'
    )]
    engines: Vec<String>,
    /// Allow tcp:// engines without TLS (for tests on a private network only).
    #[arg(long, global = true)]
    insecure_engine: bool,
    /// The image store: guest images, ready states and builds, shared by every state root
    /// (default ~/.cache/deskvm; DESKVM_CACHE_DIR is read too).
    #[arg(long, global = true, env = "DESKVM_IMAGE_DIR")]
    image_dir: Option<PathBuf>,
    /// The state root: checkpoints, and unless set on their own the review data
    /// (<state>/data, DESKVM_DATA_DIR) and the runtime dirs (<state>/run, DESKVM_RUNTIME_DIR).
    /// Default ~/.local/state/deskvm (data and runtime then keep their own defaults).
    #[arg(long, global = true, env = "DESKVM_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Long Engine API calls (`image push`, the guest and runtime images' uploads and commits)
    /// fail after this many seconds without progress, however long the whole transfer takes.
    #[arg(
        long = "stall-timeout-s",
        global = true,
        env = "DESKVM_STALL_TIMEOUT_S",
        default_value_t = 60,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    stall_timeout_s: u64,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve MCP over stdio (default) or HTTP (--http: streamable HTTP at /mcp, legacy SSE at
    /// /sse, reviews at /reviews/).
    Serve {
        #[command(flatten)]
        args: ServeArgs,
    },
    /// Install host packages (as root), build the default guest image (workstation) and save
    /// its ready states.
    Setup {
        /// Build this image instead (a built-in recipe or a recipe directory; repeatable;
        /// `all`: every built-in recipe).
        #[arg(long = "image")]
        images: Vec<String>,
    },
    /// Guest images.
    Image {
        #[command(subcommand)]
        cmd: ImageCmd,
    },
    /// The main job: start a desktop, look, click, type, look again, through a real MCP client.
    Demo {
        /// Where the screenshots go.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Report QEMU, accelerator, image and cache state, with a fix for each problem.
    Doctor,
    /// Review ledgers: list them, export one as a bundle (works after a crash, with no server).
    Review {
        #[command(subcommand)]
        cmd: ReviewCmd,
    },
    /// What deskvm holds on disk and in Docker that nothing needs: a report, or with --apply
    /// its removal, item by item. Works with or without servers running; never touches a live
    /// instance's sessions.
    Reclaim {
        /// Remove the candidates (default: only report them).
        #[arg(long)]
        apply: bool,
        /// Only these kinds: orphan_session, build_work, guest_image, ready_state,
        /// runtime_image, ledger, export (repeatable).
        #[arg(long = "kind")]
        kinds: Vec<deskvm::storage::reclaim::Kind>,
        /// An exported review bundle to remove, by name (exports are never removed otherwise).
        #[arg(long = "include")]
        include: Vec<String>,
        /// Ledgers of stopped sessions last written longer ago than this (e.g. 7d, 12h; default:
        /// the retention, DESKVM_REVIEW_RETENTION_DAYS).
        #[arg(long)]
        older_than: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Copy a file into or out of a running session: `deskvm cp LOCAL SESSION:/path` or
    /// `deskvm cp SESSION:/path LOCAL`, through a `deskvm serve --http` server.
    Cp {
        src: String,
        dst: String,
        /// The server's MCP endpoint.
        #[arg(long, env = "DESKVM_URL", default_value = "http://127.0.0.1:8765/mcp")]
        url: String,
        /// A token file (its first token is used; DESKVM_TOKEN otherwise).
        #[arg(long, env = "DESKVM_TOKEN_FILE")]
        token_file: Option<PathBuf>,
    },
    /// Measure start, screenshot, click and typing through a real MCP client.
    Bench {
        #[command(flatten)]
        options: deskvm::bench::Options,
    },
}

// `deskvm serve`'s flags.
#[derive(clap::Args)]
struct ServeArgs {
    /// Serve HTTP on this address instead of stdio, e.g. 127.0.0.1:8765 (port 0 picks one;
    /// the first stdout line says which). Non-loopback addresses need a token.
    #[arg(long, env = "DESKVM_HTTP")]
    http: Option<std::net::SocketAddr>,
    /// Bearer tokens, one per line: `name:secret` (a session belongs to the token that
    /// started it) or just `secret`.
    #[arg(long, env = "DESKVM_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Origins allowed besides loopback ones, e.g. https://app.example or http://host:*.
    #[arg(long = "allow-origin")]
    allow_origins: Vec<String>,
    /// Host names clients may use besides loopback and the bound address.
    #[arg(long = "allow-host")]
    allow_hosts: Vec<String>,
    /// Largest request body (bytes); bigger ones get 413. The default takes an `upload` of
    /// the largest file (10 MiB, 13.4 MB as base64).
    #[arg(long, default_value_t = 16 << 20)]
    max_body_bytes: usize,
    /// Most concurrent HTTP requests and open streams; more get 503.
    #[arg(long, default_value_t = 64)]
    max_streams: usize,
    /// With stdio: the loopback address the live view (session_view) is served on; port 0
    /// picks one (doctor lists it while the server runs). With --http the view is served
    /// there, at /view/.
    #[arg(long, env = "DESKVM_VIEW_ADDR", default_value = "127.0.0.1:0")]
    view_addr: std::net::SocketAddr,
    /// Most sessions at once.
    #[arg(long, env = "DESKVM_MAX_SESSIONS", default_value_t = 4)]
    max_sessions: usize,
    /// Stop a session after this many seconds without a tool call (0: never).
    #[arg(long, env = "DESKVM_IDLE_TIMEOUT_S", default_value_t = 1800)]
    idle_timeout_s: u64,
    /// The guest image a session_start that names none gets.
    #[arg(long, env = "DESKVM_IMAGE", default_value = deskvm::guest_image::DEFAULT_IMAGE)]
    image: String,
    /// Guest RAM: `shared` maps it copy-on-write from a template made from the ready state
    /// (sessions share the pages they have not written), `private` loads a full copy per
    /// session (the fallback when no template can be made).
    #[arg(long, env = "DESKVM_GUEST_MEMORY", value_enum, default_value_t = GuestMemory::Shared)]
    guest_memory: GuestMemory,
    #[command(flatten)]
    net: cli::net_args::NetArgs,
}

#[derive(Subcommand)]
enum ReviewCmd {
    /// Every session's ledger: state, events, bytes, age, and whether it is past retention.
    List,
    /// Export a session's review into the exports dir (index.html + single-file HTML).
    Export {
        session_id: String,
        /// Bundle name (default <session>-<UTC time>).
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Subcommand)]
enum ImageCmd {
    /// Build a guest image from a recipe (needs root) and its ready state; --runtime adds the
    /// Docker runtime image.
    Build {
        /// A built-in recipe (minimal, workstation) or a recipe directory (default: workstation).
        recipe: Option<String>,
        /// The image's name (default: the recipe's or its directory's name).
        #[arg(long)]
        name: Option<String>,
        /// Rebuild even when the cache has it.
        #[arg(long)]
        force: bool,
        /// Skip saving the ready state.
        #[arg(long)]
        no_ready: bool,
        /// Also build the Docker runtime image (Debian + QEMU, imported without a registry).
        #[arg(long)]
        runtime: bool,
    },
    /// Build the guest as a Docker image (`deskvm-guest:<image>-<qemu build>`: the runtime image
    /// plus the guest and its ready state) on this host's engine, and load it into each
    /// `--engine` over the Engine API. Prints one JSON line per engine (bytes, seconds).
    Push {
        /// The image to push (default: the one sessions get).
        #[arg(long, env = "DESKVM_IMAGE", default_value = deskvm::guest_image::DEFAULT_IMAGE)]
        image: String,
    },
    /// The images in the store: name, whether current, recipe hash, size, ready states, when
    /// built, and the built-in recipes not built yet.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove an image (its current build; --all: every build) and its ready states. Refused
    /// while a server or session uses it.
    Rm {
        name: String,
        #[arg(long)]
        all: bool,
    },
    /// Import an existing disk (qcow2 or raw) that boots through firmware: copied into the
    /// store, never written. Its first session cold-boots and saves a ready state.
    Import {
        file: PathBuf,
        #[arg(long)]
        name: String,
        /// bios or uefi (default: UEFI for a GPT disk with an EFI system partition and no BIOS
        /// boot partition, else BIOS).
        #[arg(long)]
        firmware: Option<String>,
        /// How the disk is attached: sata (any guest) or virtio (needs virtio drivers).
        #[arg(long, default_value = "sata")]
        bus: String,
        #[arg(long, default_value_t = 2048)]
        memory_mb: u32,
        #[arg(long, default_value_t = 1280)]
        width: u32,
        #[arg(long, default_value_t = 800)]
        height: u32,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    // stdout is the MCP transport: logs go to stderr.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "deskvm=info,qapi=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    apply_globals(&cli)?;
    let g = Globals::from(&cli);
    match cli.cmd {
        Cmd::Serve { args } => serve(&g, args).await,
        Cmd::Setup { images } => cli::setup::setup(g.accel, &images).await,
        Cmd::Image { cmd } => image(&g, cmd).await,
        Cmd::Demo { out } => demo(&g, out).await,
        Cmd::Review { cmd } => review(cmd),
        Cmd::Reclaim {
            apply,
            kinds,
            include,
            older_than,
            json,
        } => {
            // Engines elsewhere first: the main report may exit the process on a failure.
            if !g.engines.is_empty()
                && !cli::engines::reclaim(&g.engines, g.insecure_engine, apply).await?
            {
                std::process::exit(2);
            }
            cli::reclaim_report::run(apply, kinds, include, older_than, json).await
        }
        Cmd::Doctor => {
            if !cli::doctor::doctor(g.accel, &g.engines, g.insecure_engine).await {
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::Cp {
            src,
            dst,
            url,
            token_file,
        } => cli::cp::run(&src, &dst, &url, token_file.as_deref()).await,
        Cmd::Bench { mut options } => {
            options.server_args = g.server_args();
            options.insecure_engine = g.insecure_engine;
            deskvm::bench::run(options).await
        }
    }
}

/// The roots are read from the environment everywhere (and inherited by the servers `demo` and
/// `bench` spawn), so the flags become the variables, before any task reads them; the stall
/// bound is set once for every Engine API transfer.
fn apply_globals(cli: &Cli) -> Result<()> {
    for (var, dir) in [
        ("DESKVM_IMAGE_DIR", &cli.image_dir),
        ("DESKVM_STATE_DIR", &cli.state_dir),
    ] {
        if let Some(dir) = dir {
            std::env::set_var(var, std::path::absolute(dir)?);
        }
    }
    deskvm::backend::docker::transfer::set_stall_bound(std::time::Duration::from_secs(
        cli.stall_timeout_s,
    ));
    Ok(())
}

/// The global flags the commands use.
struct Globals {
    accel: AccelChoice,
    backend: BackendChoice,
    engines: Vec<String>,
    insecure_engine: bool,
}

impl From<&Cli> for Globals {
    fn from(cli: &Cli) -> Self {
        Globals {
            accel: cli.accel,
            backend: cli.backend,
            engines: cli.engines.clone(),
            insecure_engine: cli.insecure_engine,
        }
    }
}

impl Globals {
    /// What `demo` and `bench` pass on to the `deskvm serve` they spawn.
    fn server_args(&self) -> Vec<String> {
        let mut args = vec![
            "--accel".to_string(),
            self.accel.to_string(),
            "--backend".to_string(),
            format!("{:?}", self.backend).to_lowercase(),
        ];
        for e in &self.engines {
            args.extend(["--engine".to_string(), e.clone()]);
        }
        if self.insecure_engine {
            args.push("--insecure-engine".into());
        }
        args
    }
}

async fn serve(g: &Globals, a: ServeArgs) -> Result<()> {
    let transport = transport(&a)?;
    let idle = (a.idle_timeout_s > 0).then(|| std::time::Duration::from_secs(a.idle_timeout_s));
    let shared = a.guest_memory == GuestMemory::Shared;
    let tokens = match &transport {
        Transport::Http(o) => Some(&o.tokens),
        _ => None,
    };
    let net = a.net.config(tokens)?;
    let manager = cli::serve::manager(
        g.accel,
        &a.image,
        g.backend,
        a.max_sessions,
        idle,
        shared,
        &g.engines,
        g.insecure_engine,
        net,
    )
    .await?;
    manager.spawn_idle_janitor();
    deskvm::http::serve(manager, transport).await?;
    Ok(())
}

/// stdio with a loopback view listener, or HTTP: checked before anything starts (no VM, no
/// janitor run).
fn transport(a: &ServeArgs) -> Result<Transport> {
    let view_addr = a.view_addr;
    let Some(addr) = a.http else {
        if !view_addr.ip().is_loopback() {
            anyhow::bail!(
                "--view-addr {view_addr}: the stdio server's live view listener takes loopback addresses only \
                 (it has no token); serve --http with --token-file to show desktops over a network"
            );
        }
        return Ok(Transport::Stdio { view_addr });
    };
    // DESKVM_TOKEN is read here and nowhere else; it is never logged.
    let env_token = std::env::var("DESKVM_TOKEN").ok();
    let o = HttpOptions {
        addr,
        tokens: Tokens::load(a.token_file.as_deref(), env_token.as_deref())?,
        allow_origins: a.allow_origins.clone(),
        allow_hosts: a.allow_hosts.clone(),
        max_body_bytes: a.max_body_bytes,
        max_streams: a.max_streams,
    };
    o.check()?;
    Ok(Transport::Http(o))
}

async fn image(g: &Globals, cmd: ImageCmd) -> Result<()> {
    match cmd {
        ImageCmd::Build {
            recipe,
            name,
            force,
            no_ready,
            runtime,
        } => {
            let arg = recipe.unwrap_or_else(|| deskvm::guest_image::DEFAULT_IMAGE.into());
            let recipe = cli::setup::recipe_of(&arg, name.as_deref())?;
            cli::setup::build_images(g.accel, &[recipe], force, !no_ready, runtime)
                .await
                .map(|_| ())
        }
        ImageCmd::Push { image } => cli::engines::push(&g.engines, g.insecure_engine, &image).await,
        ImageCmd::List { json } => cli::images::list(json),
        ImageCmd::Rm { name, all } => cli::images::rm(&name, all).await,
        ImageCmd::Import {
            file,
            name,
            firmware,
            bus,
            memory_mb,
            width,
            height,
        } => {
            let req = cli::images::import_request(
                file,
                name,
                firmware,
                &bus,
                (width, height),
                memory_mb,
            )?;
            cli::images::import(req).await
        }
    }
}

async fn demo(g: &Globals, out: Option<PathBuf>) -> Result<()> {
    cli::setup::setup(g.accel, &[]).await?;
    let out = out.unwrap_or_else(cli::demo::default_demo_dir);
    cli::demo::run(&out, &g.server_args()).await
}

fn review(cmd: ReviewCmd) -> Result<()> {
    match cmd {
        ReviewCmd::List => cli::review::list(),
        ReviewCmd::Export { session_id, name } => cli::review::export(&session_id, name.as_deref()),
    }
}
