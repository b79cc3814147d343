//! How the CLI shows a long transfer (`deskvm image push`): a progress bar with bytes, rate and
//! ETA on a terminal, and plain lines every few seconds otherwise (logs, tests and the bench
//! read them), both from the transfer's [`Meter`].

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::backend::docker::transfer::{bytes, Meter, Phase, Snapshot};

/// How often a plain line is printed when stderr is not a terminal.
const LINE_EVERY: Duration = Duration::from_secs(2);
/// How often the bar is redrawn from the meter.
const BAR_EVERY: Duration = Duration::from_millis(200);

/// Shows `meter` on stderr until [`Shown::finish`].
pub struct Shown {
    task: tokio::task::JoinHandle<()>,
    bar: Option<ProgressBar>,
}

impl Shown {
    /// Stops showing (the bar is cleared: the caller prints the outcome).
    pub fn finish(self) {
        self.task.abort();
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Starts showing `meter`, each line or the bar's message starting with `label`.
pub fn show(label: String, meter: Arc<Meter>) -> Shown {
    if std::io::stderr().is_terminal() {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(bar_style());
        let task = tokio::spawn(draw_bar(label, meter, bar.clone()));
        Shown {
            task,
            bar: Some(bar),
        }
    } else {
        let task = tokio::spawn(print_lines(label, meter));
        Shown { task, bar: None }
    }
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "  {msg} [{bar:30}] {decimal_bytes}/{decimal_total_bytes} {decimal_bytes_per_sec}, ETA {eta}",
    )
    .expect("a valid template (checked by a test)")
    .progress_chars("=> ")
}

async fn draw_bar(label: String, meter: Arc<Meter>, bar: ProgressBar) {
    loop {
        let s = meter.snapshot();
        bar.set_length(s.total.unwrap_or(0).max(s.sent));
        bar.set_position(s.sent);
        bar.set_message(match s.phase {
            Phase::Sending => format!("{label}: sending"),
            Phase::Working => format!("{label}: the engine loads it{}", engine_part(&s)),
        });
        tokio::time::sleep(BAR_EVERY).await;
    }
}

async fn print_lines(label: String, meter: Arc<Meter>) {
    let started = Instant::now();
    let mut last = (started, 0u64);
    loop {
        tokio::time::sleep(LINE_EVERY).await;
        let s = meter.snapshot();
        let now = Instant::now();
        eprintln!(
            "  {label}: {}",
            line(&s, now - last.0, s.sent - last.1, now - started)
        );
        last = (now, s.sent);
    }
}

/// One progress line: `sent 312 MB of 1.6 GB (19 %), 45 MB/s, ETA 29 s` while sending (the
/// rate over the last interval, the ETA from the average), then what the engine said it loads.
pub fn line(s: &Snapshot, interval: Duration, moved: u64, elapsed: Duration) -> String {
    if s.phase == Phase::Working {
        return format!(
            "sent {}, the engine loads it{}",
            bytes(s.sent),
            engine_part(s)
        );
    }
    let rate = moved as f64 / interval.as_secs_f64().max(1e-3);
    let mut out = format!("sent {}", bytes(s.sent));
    if let Some(total) = s.total {
        let pct = (s.sent as f64 * 100.0 / total as f64).min(100.0);
        out += &format!(" of {} ({pct:.0} %)", bytes(total));
    }
    out += &format!(", {}/s", bytes(rate as u64));
    let average = s.sent as f64 / elapsed.as_secs_f64().max(1e-3);
    if let (Some(total), true) = (s.total, average > 0.0) {
        let eta = total.saturating_sub(s.sent) as f64 / average;
        out += &format!(", ETA {}", seconds(eta));
    }
    out
}

fn engine_part(s: &Snapshot) -> String {
    match s.engine {
        Some((done, total)) => format!(" ({} of {})", bytes(done), bytes(total)),
        None => String::new(),
    }
}

fn seconds(s: f64) -> String {
    let s = s.round() as u64;
    match s {
        s if s >= 60 => format!("{} min {} s", s / 60, s % 60),
        s => format!("{s} s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_template_parses() {
        // Only a terminal draws the bar: a template indicatif refuses would otherwise show up
        // first in a user's shell, as a panic.
        let bar = ProgressBar::hidden();
        bar.set_style(bar_style());
        bar.set_length(1_600_000_000);
        bar.set_position(400_000_000);
        assert_eq!(bar.length(), Some(1_600_000_000));
    }

    #[test]
    fn a_line_says_bytes_rate_and_eta_then_what_the_engine_loads() {
        let sending = Snapshot {
            sent: 400_000_000,
            total: Some(1_600_000_000),
            phase: Phase::Sending,
            engine: None,
        };
        let l = line(
            &sending,
            Duration::from_secs(2),
            100_000_000,
            Duration::from_secs(10),
        );
        assert_eq!(l, "sent 400 MB of 1.6 GB (25 %), 50 MB/s, ETA 30 s");
        let loading = Snapshot {
            phase: Phase::Working,
            engine: Some((800_000_000, 1_600_000_000)),
            sent: 1_610_000_000,
            ..sending
        };
        let l = line(&loading, Duration::from_secs(2), 0, Duration::from_secs(40));
        assert_eq!(l, "sent 1.6 GB, the engine loads it (800 MB of 1.6 GB)");
    }
}
