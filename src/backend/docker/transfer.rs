//! Long Engine API calls (`image push`: a save here streamed into a load there; the guest
//! files' upload and commit; the runtime image's import) are bounded by progress, not by a
//! deadline: they fail once nothing has moved for the stall bound (`--stall-timeout-s`,
//! `DESKVM_STALL_TIMEOUT_S`, default 60 s), however long the whole takes.
//!
//! bollard's request timeout bounds the wait for a response's headers, and an engine answers a
//! load or an upload only after it has read the whole body: on a fixed timeout a 1.6 GB load
//! into a fresh engine fails for taking long, not for being stuck. These calls run on a client
//! [`without_deadline`], under [`watched`].

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::{Duration, Instant};

use bollard::Docker;
use futures::future::BoxFuture;
use futures::Stream;

pub const DEFAULT_STALL: Duration = Duration::from_secs(60);

static STALL: OnceLock<Duration> = OnceLock::new();

/// Sets this process's stall bound (from `--stall-timeout-s`); the first call wins.
pub fn set_stall_bound(bound: Duration) {
    let _ = STALL.set(bound);
}

/// How long a long call may go without progress before it fails.
pub fn stall_bound() -> Duration {
    STALL.get().copied().unwrap_or(DEFAULT_STALL)
}

/// Long enough never to fire: [`watched`] is the bound.
const NO_DEADLINE: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The same engine, with no request timeout, for the calls [`watched`] bounds.
pub fn without_deadline(docker: &Docker) -> Docker {
    docker.clone().with_timeout(NO_DEADLINE)
}

/// What a long call has done so far, shared between the call (which counts), the watchdog
/// (which fails it once nothing moves) and whoever shows progress.
#[derive(Debug, Default)]
pub struct Meter {
    /// The body's expected size (0: unknown).
    total: AtomicU64,
    /// Bytes of the body handed to the engine.
    sent: AtomicU64,
    /// Bumped by every sign of progress: a chunk taken, a progress line from the engine, an
    /// answered ping once the engine works on what it got. The watchdog watches only this.
    activity: AtomicU64,
    /// The body is sent whole (or the call has none): the engine works on it.
    working: AtomicBool,
    /// The body's source had nothing to give when last asked: a stall now is the source's.
    source_waiting: AtomicBool,
    /// The engine's own progress on what it loads (its response's progress lines).
    engine_done: AtomicU64,
    engine_total: AtomicU64,
}

/// Where a call is: sending its body, or waiting while the engine works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Sending,
    Working,
}

/// A reading of a [`Meter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub sent: u64,
    pub total: Option<u64>,
    pub phase: Phase,
    /// (done, total) of what the engine reported it loads, once it has said.
    pub engine: Option<(u64, u64)>,
}

impl Meter {
    /// A call that sends a body (`counted`), of `total` bytes when known.
    pub fn new(total: Option<u64>) -> Arc<Self> {
        let m = Meter::default();
        m.total.store(total.unwrap_or(0), Ordering::Relaxed);
        Arc::new(m)
    }

    /// A call without a body (a commit): only the engine's answers show it is at work.
    pub fn working() -> Arc<Self> {
        let m = Meter::default();
        m.working.store(true, Ordering::Relaxed);
        Arc::new(m)
    }

    pub fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let total = self.total.load(Ordering::Relaxed);
        let engine_total = self.engine_total.load(Ordering::Relaxed);
        Snapshot {
            sent: self.sent.load(Ordering::Relaxed),
            total: (total > 0).then_some(total),
            phase: match self.working.load(Ordering::Relaxed) {
                true => Phase::Working,
                false => Phase::Sending,
            },
            engine: (engine_total > 0)
                .then(|| (self.engine_done.load(Ordering::Relaxed), engine_total)),
        }
    }

    /// A progress line from the engine; `done`/`total` when it carries byte counts.
    pub fn engine_progress(&self, done: Option<i64>, total: Option<i64>) {
        if let (Some(d), Some(t)) = (done, total) {
            self.engine_done.store(d.max(0) as u64, Ordering::Relaxed);
            self.engine_total.store(t.max(0) as u64, Ordering::Relaxed);
        }
        self.bump();
    }

    fn bump(&self) {
        self.activity.fetch_add(1, Ordering::Relaxed);
    }

    fn activity(&self) -> u64 {
        self.activity.load(Ordering::Relaxed)
    }

    fn stalled(&self, idle: Duration) -> Stalled {
        let s = self.snapshot();
        let cause = match s.phase {
            Phase::Working => StallCause::EngineSilent,
            Phase::Sending if self.source_waiting.load(Ordering::Relaxed) => {
                StallCause::SourceStoppedSending
            }
            Phase::Sending => StallCause::EngineStoppedReading,
        };
        Stalled {
            idle,
            sent: s.sent,
            total: s.total,
            cause,
        }
    }
}

/// `source` as a request body that counts what the engine takes into `meter`. The engine's
/// client asks for the next chunk only once it could write the last, so a source that is
/// waited on (`Pending`) is slow itself, while one that is not asked has an engine that
/// stopped reading: [`Stalled`] says which.
pub fn counted<S, T, E>(source: S, meter: Arc<Meter>) -> impl Stream<Item = Result<T, E>> + Send
where
    S: Stream<Item = Result<T, E>> + Send + 'static,
    T: AsRef<[u8]>,
{
    let mut source = Box::pin(source);
    futures::stream::poll_fn(move |cx| {
        let next = source.as_mut().poll_next(cx);
        meter
            .source_waiting
            .store(next.is_pending(), Ordering::Relaxed);
        match &next {
            Poll::Ready(Some(Ok(chunk))) => {
                meter
                    .sent
                    .fetch_add(chunk.as_ref().len() as u64, Ordering::Relaxed);
                meter.bump();
            }
            Poll::Ready(None) => {
                meter.working.store(true, Ordering::Relaxed);
                meter.bump();
            }
            Poll::Ready(Some(Err(_))) | Poll::Pending => {}
        }
        next
    })
}

/// Which side stood still when a long call was given up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StallCause {
    /// The body's source had more to send, and the engine did not take it.
    EngineStoppedReading,
    /// The engine waited for the body, and its source (this host's engine) sent nothing.
    SourceStoppedSending,
    /// The body was in (or there was none), and the engine neither reported progress nor
    /// answered.
    EngineSilent,
}

impl std::fmt::Display for StallCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StallCause::EngineStoppedReading => "the engine stopped reading",
            StallCause::SourceStoppedSending => "the source stopped sending",
            StallCause::EngineSilent => "the engine stopped answering",
        })
    }
}

/// A long call that made no progress for the stall bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stalled {
    pub idle: Duration,
    pub sent: u64,
    pub total: Option<u64>,
    pub cause: StallCause,
}

impl std::fmt::Display for Stalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no progress for {} s", self.idle.as_secs())?;
        if self.sent > 0 || self.total.is_some() {
            write!(f, " after {}", bytes(self.sent))?;
            if let Some(t) = self.total {
                write!(f, " of {}", bytes(t))?;
            }
        }
        write!(f, " ({})", self.cause)
    }
}

impl std::error::Error for Stalled {}

/// Decimal sizes as the progress lines and errors say them: `312 MB`, `1.6 GB`.
pub fn bytes(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.1} GB", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{} MB", n / 1_000_000),
        n if n >= 1_000 => format!("{} kB", n / 1_000),
        n => format!("{n} B"),
    }
}

/// Tells, from successive readings of a progress counter, when it has stood still for the
/// bound. Pure: the caller brings the clock.
#[derive(Debug)]
pub struct StallDetector {
    bound: Duration,
    seen: u64,
    since: Instant,
}

impl StallDetector {
    pub fn new(bound: Duration, counter: u64, now: Instant) -> Self {
        StallDetector {
            bound,
            seen: counter,
            since: now,
        }
    }

    /// How long the counter has stood still, once that is the bound or more.
    pub fn check(&mut self, counter: u64, now: Instant) -> Option<Duration> {
        if counter != self.seen {
            self.seen = counter;
            self.since = now;
            return None;
        }
        let idle = now.saturating_duration_since(self.since);
        (idle >= self.bound).then_some(idle)
    }
}

/// Something the watchdog can ask whether it is there: an engine (`ping`).
pub trait Answers: Sync {
    fn answers(&self) -> BoxFuture<'_, bool>;
}

impl Answers for Docker {
    fn answers(&self) -> BoxFuture<'_, bool> {
        Box::pin(async move { self.ping().await.is_ok() })
    }
}

/// Whom the watchdog asks when the side it waits on says nothing: the engine that sends the
/// body (an export prepares its archive before its first byte) and the one that takes it (a
/// load unpacks, a commit writes its layer, without a word).
#[derive(Clone, Copy, Default)]
pub struct Pinged<'a> {
    pub source: Option<&'a dyn Answers>,
    pub target: Option<&'a dyn Answers>,
}

impl<'a> Pinged<'a> {
    /// A call that sends nothing from an engine: only `target` is asked.
    pub fn target(target: &'a Docker) -> Self {
        Pinged {
            source: None,
            target: Some(target),
        }
    }
}

/// Runs `work` until it ends, or fails it (dropping it, which closes its connections) once
/// `meter` has not moved for `bound`. Bytes taken are progress; so are the engine's progress
/// lines; and where the side the call waits on can say nothing (a source engine preparing its
/// export, a target engine unpacking or committing), its answers to pings, asked every quarter
/// of the bound: an engine that is stopped or cut off answers none. An engine that does not
/// take the bytes offered is never pinged: it is stalled however well it answers.
pub async fn watched<T>(
    meter: &Meter,
    bound: Duration,
    pinged: Pinged<'_>,
    work: impl Future<Output = T>,
) -> Result<T, Stalled> {
    let mut work = std::pin::pin!(work);
    let mut detector = StallDetector::new(bound, meter.activity(), Instant::now());
    let mut tick = tokio::time::interval(check_every(bound));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let heartbeat = async {
        let every = (bound / 4).clamp(Duration::from_millis(10), Duration::from_secs(5));
        loop {
            tokio::time::sleep(every).await;
            let asked = match meter.snapshot().phase {
                Phase::Working => pinged.target,
                Phase::Sending if meter.source_waiting.load(Ordering::Relaxed) => pinged.source,
                Phase::Sending => None,
            };
            let Some(asked) = asked else { continue };
            if let Ok(true) = tokio::time::timeout(every, asked.answers()).await {
                meter.bump();
            }
        }
    };
    let mut heartbeat = std::pin::pin!(heartbeat);
    loop {
        tokio::select! {
            done = &mut work => return Ok(done),
            () = &mut heartbeat => unreachable!("the heartbeat loops for as long as the call"),
            _ = tick.tick() => {
                if let Some(idle) = detector.check(meter.activity(), Instant::now()) {
                    return Err(meter.stalled(idle));
                }
            }
        }
    }
}

/// The error of a long call named `what` that stalled.
pub fn stalled(what: impl Into<String>) -> impl FnOnce(Stalled) -> super::BackendError {
    let what = what.into();
    move |source| super::BackendError::Stalled { what, source }
}

/// How often the watchdog looks: a tenth of the bound, within 10 ms..1 s (a stall is
/// reported at most that late).
fn check_every(bound: Duration) -> Duration {
    (bound / 10).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

#[cfg(test)]
#[path = "transfer_tests.rs"]
mod tests;
