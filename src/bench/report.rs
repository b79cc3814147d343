//! The figures of a run: printed as a table line each, and kept for `--json`.

use std::time::Duration;

use serde_json::json;

pub(crate) fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx]
}

/// Every figure this run printed, for `--json`.
pub(crate) static METRICS: std::sync::Mutex<Vec<serde_json::Value>> =
    std::sync::Mutex::new(Vec::new());

/// Adds a figure to the run's JSON (`name` plus its values).
pub(crate) fn record(name: &str, mut values: serde_json::Value) {
    if let Some(o) = values.as_object_mut() {
        o.insert("name".into(), json!(name));
    }
    METRICS.lock().expect("metrics poisoned").push(values);
}

/// A figure recorded earlier in this run.
pub(crate) fn metric(name: &str, field: &str) -> Option<f64> {
    METRICS
        .lock()
        .expect("metrics poisoned")
        .iter()
        .find(|m| m["name"] == name)
        .and_then(|m| m[field].as_f64())
}

pub(crate) fn summary(name: &str, mut ms: Vec<f64>) {
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    record(
        name,
        json!({ "unit": "ms", "n": ms.len(), "p50": pct(&ms, 0.5), "p95": pct(&ms, 0.95),
                "min": ms.first(), "max": ms.last() }),
    );
    println!(
        "{name:<38} n={:<3} p50={:>8.1} ms  p95={:>8.1} ms  min={:>8.1} ms  max={:>8.1} ms",
        ms.len(),
        pct(&ms, 0.5),
        pct(&ms, 0.95),
        ms[0],
        ms[ms.len() - 1]
    );
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
