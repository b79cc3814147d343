//! A second Docker engine for the "remote engine" tests: `tools/test-engine.sh` runs a dockerd in
//! its own network namespace, reachable only over TCP with mutual TLS, so nothing a test does
//! through it can fall back to the host's default engine by accident.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// A running engine; dropping it kills everything the engine started and removes its files.
pub struct TestEngine {
    pub name: String,
    pub url: String,
    /// A DOCKER_CERT_PATH-style directory: ca.pem, cert.pem, key.pem.
    pub certs: PathBuf,
    pub dockerd_pid: i32,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/test-engine.sh")
}

fn run_script(args: &[&str]) -> Result<Output> {
    Command::new("bash")
        .arg(script())
        .args(args)
        .output()
        .with_context(|| format!("running tools/test-engine.sh {}", args.join(" ")))
}

impl TestEngine {
    /// Starts the engine with tools/test-engine.sh (panics with the script's stderr on failure):
    /// NAME (at most 8 characters) names its netns, veth and directories, INDEX (1..200) picks
    /// its subnet 10.213.INDEX.0/24, so tests running at once need distinct ones of both.
    pub fn start(name: &str, index: u8) -> Result<TestEngine> {
        let out = run_script(&["start", name, &index.to_string()])?;
        if !out.status.success() {
            panic!(
                "tools/test-engine.sh start {name} {index} failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let field = |key: &str| -> Result<String> {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .map(str::to_owned)
                .with_context(|| format!("no {key}= in test-engine.sh's output: {stdout:?}"))
        };
        // Made before the last checks so that a bad line still stops the engine (Drop).
        let mut engine = TestEngine {
            name: name.to_owned(),
            url: field("url")?,
            certs: field("certs")?.into(),
            dockerd_pid: 0,
        };
        engine.dockerd_pid = field("pid")?.parse().context("pid= is not a number")?;
        Ok(engine)
    }

    /// `--engine` argument for deskvm: "NAME=URL,tls=CERTS"
    pub fn engine_arg(&self) -> String {
        format!("{}={},tls={}", self.name, self.url, self.certs.display())
    }

    /// Runs the docker CLI against this engine with TLS flags; returns (success, stdout, stderr).
    /// DOCKER_HOST and friends are removed so the host's settings cannot redirect it.
    pub fn docker(&self, args: &[&str]) -> Result<(bool, String, String)> {
        let out = Command::new("docker")
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH")
            .arg("--tlsverify")
            .arg("--tlscacert")
            .arg(self.certs.join("ca.pem"))
            .arg("--tlscert")
            .arg(self.certs.join("cert.pem"))
            .arg("--tlskey")
            .arg(self.certs.join("key.pem"))
            .args(["-H", &self.url])
            .args(args)
            .output()
            .context("running the docker CLI")?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// `deskvm image push --engine ...`: builds the guest image here (once) and loads it there,
    /// on the first try (no fixed deadline cuts a big load into a fresh engine short), saying
    /// how far it got as it goes (stderr is not a terminal: plain progress lines).
    pub fn push(&self) -> Result<Value> {
        let started = std::time::Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_deskvm"))
            .args(["image", "push", "--engine", &self.engine_arg()])
            .env("DESKVM_IMAGE", "minimal")
            .output()
            .context("running deskvm image push")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "image push failed: {stdout}\n{stderr}"
        );
        let line = stdout
            .lines()
            .last()
            .context("image push prints a JSON line")?;
        let v: Value = serde_json::from_str(line)?;
        assert_eq!(v["engine"], self.name.as_str(), "{v}");
        assert!(v["bytes"].as_u64().unwrap_or(0) > 100 << 20, "{v}");
        assert!(
            stderr.lines().any(|l| self.is_progress(l)),
            "no progress line in: {stderr}"
        );
        eprintln!(
            "image push to engine {} took {:?} (the build included): {v}",
            self.name,
            started.elapsed()
        );
        Ok(v)
    }

    /// Whether `line` is one of `image push`'s progress lines for this engine with bytes sent.
    pub fn is_progress(&self, line: &str) -> bool {
        let head = format!("engine {}: sent ", self.name);
        line.contains(&head) && line.contains("/s") && !line.contains(": sent 0 B")
    }

    /// Stops the engine's dockerd with SIGSTOP (a daemon that hangs: its sockets stay open, it
    /// reads and answers nothing) until the returned guard is dropped (SIGCONT).
    pub fn pause_daemon(&self) -> Result<Paused> {
        // SAFETY: kill(2) on the pid the test engine reported; no memory is touched.
        if unsafe { libc::kill(self.dockerd_pid, libc::SIGSTOP) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("SIGSTOP dockerd {}", self.dockerd_pid));
        }
        Ok(Paused {
            pid: self.dockerd_pid,
            at: std::time::Instant::now(),
        })
    }

    /// Cuts the engine off the network (tools/test-engine.sh partition): it goes silent, and
    /// no connection to it is reset.
    pub fn partition(&self) -> Result<()> {
        self.step("partition")
    }

    /// SIGKILLs the daemon (tools/test-engine.sh kill-daemon): an engine that goes away without
    /// a word, its containers left running under their shims until the engine is dropped.
    pub fn kill_daemon(&self) -> Result<()> {
        self.step("kill-daemon")
    }

    fn step(&self, command: &str) -> Result<()> {
        let out = run_script(&[command, &self.name])?;
        if !out.status.success() {
            bail!(
                "tools/test-engine.sh {command} {} failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for TestEngine {
    /// Stops the engine however the test ended; a failed cleanup is reported, never a panic (a
    /// panic in drop while unwinding would abort the test binary).
    fn drop(&mut self) {
        match run_script(&["stop", &self.name]) {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "tools/test-engine.sh stop {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("{e:#}"),
        }
    }
}

/// A dockerd stopped by [`TestEngine::pause_daemon`]; dropping it continues the daemon (so the
/// engine can be torn down however the test ends). Drop it before the engine.
pub struct Paused {
    pid: i32,
    /// When the daemon was stopped.
    pub at: std::time::Instant,
}

impl Drop for Paused {
    fn drop(&mut self) {
        // SAFETY: as in `pause_daemon`.
        unsafe { libc::kill(self.pid, libc::SIGCONT) };
    }
}
