//! The stall watchdog against fake transfers: a source and a reader standing in for the local
//! engine's export and the target engine's load, each of which can stop.

use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};

use super::*;

const CHUNK: usize = 64 << 10;

type Chunk = Result<Vec<u8>, std::io::Error>;

/// `n` chunks, `gap` apart.
fn paced(n: usize, gap: Duration) -> impl Stream<Item = Chunk> + Send + 'static {
    futures::stream::unfold(0, move |i| async move {
        if i == n {
            return None;
        }
        tokio::time::sleep(gap).await;
        Some((Ok(vec![0u8; CHUNK]), i + 1))
    })
}

/// Reads `body` as an engine would, but stops reading (never asks again) after `keep` chunks.
async fn engine_reading(body: impl Stream<Item = Chunk>, keep: Option<usize>) -> usize {
    let mut body = std::pin::pin!(body);
    let mut read = 0;
    while let Some(chunk) = body.next().await {
        chunk.expect("the fake source does not fail");
        read += 1;
        if Some(read) == keep {
            futures::future::pending::<()>().await;
        }
    }
    read
}

#[test]
fn the_detector_fires_only_once_the_counter_stood_still_for_the_bound() {
    let t0 = Instant::now();
    let bound = Duration::from_secs(60);
    let mut d = StallDetector::new(bound, 0, t0);
    assert_eq!(d.check(0, t0 + Duration::from_secs(59)), None);
    // Movement restarts the clock, however late in the bound it comes.
    assert_eq!(d.check(1, t0 + Duration::from_secs(59)), None);
    assert_eq!(d.check(1, t0 + Duration::from_secs(100)), None);
    assert_eq!(
        d.check(1, t0 + Duration::from_secs(119)),
        Some(Duration::from_secs(60))
    );
    // A long transfer that keeps moving never fires, whatever its length.
    let mut d = StallDetector::new(bound, 0, t0);
    for s in 1..10_000u64 {
        assert_eq!(d.check(s, t0 + Duration::from_secs(s * 30)), None);
    }
}

#[test]
fn a_stall_says_how_long_how_far_and_which_side() {
    let s = Stalled {
        idle: Duration::from_secs(60),
        sent: 312_400_000,
        total: Some(1_612_000_000),
        cause: StallCause::EngineStoppedReading,
    };
    assert_eq!(
        s.to_string(),
        "no progress for 60 s after 312 MB of 1.6 GB (the engine stopped reading)"
    );
    let commit = Stalled {
        idle: Duration::from_secs(61),
        sent: 0,
        total: None,
        cause: StallCause::EngineSilent,
    };
    assert_eq!(
        commit.to_string(),
        "no progress for 61 s (the engine stopped answering)"
    );
}

#[tokio::test]
async fn a_steady_transfer_longer_than_the_bound_completes() {
    let bound = Duration::from_millis(300);
    let meter = Meter::new(Some(8 * CHUNK as u64));
    let body = counted(paced(8, Duration::from_millis(100)), meter.clone());
    let started = Instant::now();
    let read = watched(&meter, bound, Pinged::default(), engine_reading(body, None))
        .await
        .expect("a transfer that keeps moving is not a stall");
    assert!(started.elapsed() > bound * 2, "{:?}", started.elapsed());
    assert_eq!(read, 8);
    let s = meter.snapshot();
    assert_eq!((s.sent, s.phase), (8 * CHUNK as u64, Phase::Working));
}

#[tokio::test]
async fn an_engine_that_stops_reading_fails_within_the_bound() {
    let bound = Duration::from_millis(300);
    let meter = Meter::new(Some(1 << 30));
    let body = counted(paced(usize::MAX, Duration::ZERO), meter.clone());
    let started = Instant::now();
    let stalled = watched(
        &meter,
        bound,
        Pinged::default(),
        engine_reading(body, Some(3)),
    )
    .await
    .expect_err("the reader stopped");
    let took = started.elapsed();
    assert!(took >= bound && took < bound * 3, "{took:?}");
    assert_eq!(stalled.cause, StallCause::EngineStoppedReading);
    assert_eq!(stalled.sent, 3 * CHUNK as u64);
    assert_eq!(stalled.total, Some(1 << 30));
}

#[tokio::test]
async fn a_source_that_stops_sending_is_named_as_the_one_that_stalled() {
    let bound = Duration::from_millis(300);
    let meter = Meter::new(None);
    let source = paced(2, Duration::ZERO).chain(futures::stream::pending());
    let body = counted(source, meter.clone());
    let stalled = watched(&meter, bound, Pinged::default(), engine_reading(body, None))
        .await
        .expect_err("the source stopped");
    assert_eq!(stalled.cause, StallCause::SourceStoppedSending);
    assert_eq!(stalled.sent, 2 * CHUNK as u64);
}

#[tokio::test]
async fn after_the_body_an_engine_without_a_word_stalls_and_one_with_progress_does_not() {
    let bound = Duration::from_millis(300);
    // Silent after the last byte (no progress lines, no engine to ping): a stall.
    let meter = Meter::new(None);
    let body = counted(paced(2, Duration::ZERO), meter.clone());
    let silent = async {
        engine_reading(body, None).await;
        futures::future::pending::<()>().await
    };
    let stalled = watched(&meter, bound, Pinged::default(), silent)
        .await
        .unwrap_err();
    assert_eq!(stalled.cause, StallCause::EngineSilent);

    // Reporting its own progress while it loads for longer than the bound: no stall.
    let meter = Meter::new(None);
    let body = counted(paced(2, Duration::ZERO), meter.clone());
    let loading = async {
        engine_reading(body, None).await;
        for done in 1..=8 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            meter.engine_progress(Some(done), Some(8));
        }
    };
    watched(&meter, bound, Pinged::default(), loading)
        .await
        .expect("an engine reporting progress is not stalled");
    assert_eq!(meter.snapshot().engine, Some((8, 8)));
}

/// An engine that answers pings, or not.
struct Fake(bool);

impl Answers for Fake {
    fn answers(&self) -> futures::future::BoxFuture<'_, bool> {
        Box::pin(std::future::ready(self.0))
    }
}

#[tokio::test]
async fn a_source_that_prepares_in_silence_but_answers_is_waited_for() {
    let bound = Duration::from_millis(300);
    // Nothing for three bounds (an export writing its archive first), then the bytes.
    let source = futures::stream::once(tokio::time::sleep(bound * 3))
        .filter_map(|()| std::future::ready(None::<Chunk>))
        .chain(paced(2, Duration::ZERO));
    let (answering, silent) = (Fake(true), Fake(false));
    let meter = Meter::new(None);
    let pinged = Pinged {
        source: Some(&answering),
        target: Some(&silent),
    };
    let read = watched(
        &meter,
        bound,
        pinged,
        engine_reading(counted(source, meter.clone()), None),
    )
    .await
    .expect("a source that answers is at work");
    assert_eq!(read, 2);

    // The same source, silent to pings too: a stall, the source's.
    let source = futures::stream::once(tokio::time::sleep(bound * 3))
        .filter_map(|()| std::future::ready(None::<Chunk>))
        .chain(paced(2, Duration::ZERO));
    let meter = Meter::new(None);
    let pinged = Pinged {
        source: Some(&silent),
        target: Some(&answering),
    };
    let stalled = watched(
        &meter,
        bound,
        pinged,
        engine_reading(counted(source, meter.clone()), None),
    )
    .await
    .unwrap_err();
    assert_eq!(stalled.cause, StallCause::SourceStoppedSending);
}

#[tokio::test]
async fn an_engine_that_answers_but_does_not_read_is_stalled_all_the_same() {
    let bound = Duration::from_millis(300);
    let answering = Fake(true);
    let meter = Meter::new(None);
    let pinged = Pinged {
        source: Some(&answering),
        target: Some(&answering),
    };
    let body = counted(paced(usize::MAX, Duration::ZERO), meter.clone());
    let stalled = watched(&meter, bound, pinged, engine_reading(body, Some(3)))
        .await
        .unwrap_err();
    assert_eq!(stalled.cause, StallCause::EngineStoppedReading);

    // After the body, an engine that answers is at work (a commit, an unpack).
    let meter = Meter::working();
    let working = async { tokio::time::sleep(bound * 3).await };
    watched(
        &meter,
        bound,
        Pinged {
            source: None,
            target: Some(&answering),
        },
        working,
    )
    .await
    .expect("an answering engine works on what it got");
}
