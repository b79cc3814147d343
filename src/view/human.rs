//! What a person did through a control link, summarised for the review ledger: one
//! `human_input` event per burst of input (clicks with where they landed, how many keys, wheel
//! turns and pointer moves), not one per motion event. Which keys is not kept: a person taking
//! over is often typing a password.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::rfb::Input;

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

/// One viewer's input state: buttons and keys held, where its pointer was.
#[derive(Default)]
pub struct Tracker {
    mask: u8,
    at: Option<(u16, u16)>,
    /// Keys pressed and not released, with the message that pressed them.
    held: HashMap<u32, Vec<u8>>,
}

impl Tracker {
    /// Adds one input to `burst`.
    pub fn note(&mut self, input: &Input, burst: &mut Burst) {
        match input {
            Input::Key { down, keysym, raw } => {
                if *down {
                    // A key held down repeats: count it once.
                    if self.held.insert(*keysym, raw.clone()).is_none() {
                        burst.keys += 1;
                    }
                } else {
                    self.held.remove(keysym);
                }
            }
            Input::Pointer { mask, x, y } => {
                let pressed = mask & !self.mask;
                for (bit, button) in [(0, "left"), (1, "middle"), (2, "right")] {
                    if pressed & (1 << bit) != 0 {
                        burst.click_count += 1;
                        if burst.clicks.len() < CLICKS_LISTED {
                            burst.clicks.push(Click {
                                button,
                                x: *x,
                                y: *y,
                            });
                        }
                    }
                }
                burst.scrolls += (pressed >> 3 & 0x0f).count_ones();
                if pressed == 0 && self.at.is_some_and(|a| a != (*x, *y)) {
                    burst.moves += 1;
                }
                self.mask = *mask;
                self.at = Some((*x, *y));
                burst.pointer = Some((*x, *y));
            }
        }
    }

    /// Messages that release whatever this viewer still holds (it is leaving): a key or button
    /// left down would stay down for the agent.
    pub fn release_all(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        for (_, mut raw) in self.held.drain() {
            match raw[0] {
                4 => raw[1] = 0,
                _ => {
                    raw[2] = 0;
                    raw[3] = 0;
                }
            }
            out.extend(raw);
        }
        if self.mask != 0 {
            let (x, y) = self.at.unwrap_or_default();
            out.push(5);
            out.push(0);
            out.extend(x.to_be_bytes());
            out.extend(y.to_be_bytes());
            self.mask = 0;
        }
        out
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
    /// Notes `inputs` of viewer `viewer`.
    pub fn add(&self, viewer: u32, tracker: &mut Tracker, inputs: &[Input]) {
        if inputs.is_empty() {
            return;
        }
        let mut slot = self.burst.lock().expect("human log poisoned");
        let burst = slot.get_or_insert_with(Burst::new);
        burst.viewers.insert(viewer);
        burst.last = Instant::now();
        for i in inputs {
            tracker.note(i, burst);
        }
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

    fn ptr(mask: u8, x: u16, y: u16) -> Input {
        Input::Pointer { mask, x, y }
    }

    fn key(down: bool, keysym: u32) -> Input {
        Input::Key {
            down,
            keysym,
            raw: vec![4, down as u8, 0, 0, 0, 0, 0, keysym as u8],
        }
    }

    #[test]
    fn a_burst_counts_clicks_keys_wheel_and_moves_not_events() {
        let log = HumanLog::default();
        let mut t = Tracker::default();
        let inputs = [
            ptr(0, 10, 10),
            ptr(0, 20, 10),
            ptr(0, 30, 10),
            ptr(1, 30, 10),
            ptr(1, 30, 10),
            ptr(0, 30, 10),
            ptr(4, 40, 50),
            ptr(0, 40, 50),
            ptr(8, 40, 50),
            ptr(0, 40, 50),
            key(true, 0x61),
            key(true, 0x61), // auto-repeat
            key(false, 0x61),
            key(true, 0x62),
            key(false, 0x62),
        ];
        log.add(3, &mut t, &inputs);
        assert_eq!(log.take_touched(), Some(Some((40, 50))));
        assert_eq!(log.take_touched(), None);
        assert!(log.take_if_quiet().is_none(), "input just came");
        let b = log.take().unwrap();
        assert_eq!(
            b.clicks,
            vec![
                Click {
                    button: "left",
                    x: 30,
                    y: 10
                },
                Click {
                    button: "right",
                    x: 40,
                    y: 50
                }
            ]
        );
        assert_eq!((b.click_count, b.keys, b.scrolls, b.moves), (2, 2, 1, 2));
        assert_eq!(b.pointer, Some((40, 50)));
        assert_eq!(b.to_json()["viewers"], json!([3]));
        assert!(log.take().is_none());
    }

    #[test]
    fn a_leaving_viewer_releases_what_it_holds() {
        let log = HumanLog::default();
        let mut t = Tracker::default();
        log.add(1, &mut t, &[key(true, 0xffe1), ptr(1, 5, 6)]);
        let out = t.release_all();
        assert_eq!(out, vec![4, 0, 0, 0, 0, 0, 0, 0xe1, 5, 0, 0, 5, 0, 6]);
        assert!(t.release_all().is_empty());
    }
}
