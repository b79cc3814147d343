//! A person's input through a control view, as the session's review ledger keeps it: one
//! `human_input` event per burst of input (clicks with where they landed, how many keys, wheel
//! turns and pointer moves), not one per motion event. Which keys is not kept: a person taking
//! over is often typing a password.
//!
//! The session owns this record; the `view` room (above it) reads the VNC protocol and fills
//! it in through [`HumanLog::add`].

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// A burst ends after this long without input (or when the viewer leaves, or the agent's next
/// call comes).
pub const QUIET: Duration = Duration::from_millis(1500);
/// Clicks listed one by one in an event; past that they are only counted.
const CLICKS_LISTED: usize = 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Click {
    pub button: &'static str,
    pub x: u16,
    pub y: u16,
}

/// One burst of a person's input.
#[derive(Debug, Clone)]
pub struct Burst {
    pub viewers: BTreeSet<u32>,
    pub from: String,
    pub last: Instant,
    pub clicks: Vec<Click>,
    pub click_count: u32,
    pub keys: u32,
    pub scrolls: u32,
    pub moves: u32,
    /// Where the person left the pointer.
    pub pointer: Option<(u16, u16)>,
}

impl Burst {
    fn new() -> Self {
        Burst {
            viewers: BTreeSet::new(),
            from: crate::ledger::now(),
            last: Instant::now(),
            clicks: Vec::new(),
            click_count: 0,
            keys: 0,
            scrolls: 0,
            moves: 0,
            pointer: None,
        }
    }

    /// Counts a click, and lists it while the list is short (a long burst stays one event).
    pub fn click(&mut self, click: Click) {
        self.click_count += 1;
        if self.clicks.len() < CLICKS_LISTED {
            self.clicks.push(click);
        }
    }

    /// The ledger event's fields.
    pub fn to_json(&self) -> Value {
        json!({
            "viewers": self.viewers,
            "from": self.from,
            "clicks": self.clicks.iter().map(|c| json!({ "button": c.button, "x": c.x, "y": c.y })).collect::<Vec<_>>(),
            "click_count": self.click_count,
            "keys": self.keys,
            "scrolls": self.scrolls,
            "pointer_moves": self.moves,
            "pointer": self.pointer.map(|(x, y)| json!({ "x": x, "y": y })),
        })
    }
}

/// A session's person input not yet on record.
#[derive(Default)]
pub struct HumanLog {
    burst: Mutex<Option<Burst>>,
    /// A person's input reached the guest since the agent's last call: the lane's idea of the
    /// screen and the pointer is stale.
    touched: AtomicBool,
    /// Where a person's pointer was last.
    pointer: Mutex<Option<(u16, u16)>>,
}

impl HumanLog {
    /// Notes input of viewer `viewer`: `note` adds it to the current burst (begun if there is
    /// none).
    pub fn add(&self, viewer: u32, note: impl FnOnce(&mut Burst)) {
        let mut slot = self.burst.lock().expect("human log poisoned");
        let burst = slot.get_or_insert_with(Burst::new);
        burst.viewers.insert(viewer);
        burst.last = Instant::now();
        note(burst);
        if burst.pointer.is_some() {
            *self.pointer.lock().expect("human log poisoned") = burst.pointer;
        }
        self.touched.store(true, Ordering::SeqCst);
    }

    /// The burst, if there was one.
    pub fn take(&self) -> Option<Burst> {
        self.burst.lock().expect("human log poisoned").take()
    }

    /// The burst, once no input came for [`QUIET`].
    pub fn take_if_quiet(&self) -> Option<Burst> {
        let mut slot = self.burst.lock().expect("human log poisoned");
        if slot.as_ref().is_some_and(|b| b.last.elapsed() >= QUIET) {
            return slot.take();
        }
        None
    }

    /// Whether a person touched the guest since the last call to this (and clears it), and
    /// where they left the pointer if they moved it.
    pub fn take_touched(&self) -> Option<Option<(u16, u16)>> {
        self.touched
            .swap(false, Ordering::SeqCst)
            .then(|| self.pointer.lock().expect("human log poisoned").take())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_burst_counts_every_click_and_lists_the_first() {
        let log = HumanLog::default();
        log.add(1, |b| {
            for i in 0..25 {
                b.click(Click {
                    button: "left",
                    x: i,
                    y: 0,
                });
            }
        });
        let b = log.take().unwrap();
        assert_eq!((b.click_count, b.clicks.len()), (25, CLICKS_LISTED));
        assert_eq!(log.take_touched(), Some(None), "no pointer position noted");
    }
}
