//! What a person did through a control link, read from the RFB messages the browser sends and
//! noted as a [`Burst`] in the session's [`HumanLog`] (the session owns the record and writes
//! it to its ledger; this room only knows the protocol).

use std::collections::HashMap;

use super::rfb::Input;
use crate::session::human::{Burst, Click, HumanLog};

/// One viewer's input state: buttons and keys held, where its pointer was.
#[derive(Default)]
pub struct Tracker {
    mask: u8,
    at: Option<(u16, u16)>,
    /// Keys pressed and not released, with the message that pressed them.
    held: HashMap<u32, Vec<u8>>,
}

impl Tracker {
    /// Notes `inputs` of viewer `viewer` in the session's log of a person's input.
    pub fn feed(&mut self, log: &HumanLog, viewer: u32, inputs: &[Input]) {
        if inputs.is_empty() {
            return;
        }
        log.add(viewer, |burst| {
            for i in inputs {
                self.note(i, burst);
            }
        });
    }

    /// Adds one input to `burst`.
    fn note(&mut self, input: &Input, burst: &mut Burst) {
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
                        burst.click(Click {
                            button,
                            x: *x,
                            y: *y,
                        });
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

#[cfg(test)]
mod tests {
    use serde_json::json;

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
        t.feed(&log, 3, &inputs);
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
        t.feed(&log, 1, &[key(true, 0xffe1), ptr(1, 5, 6)]);
        let out = t.release_all();
        assert_eq!(out, vec![4, 0, 0, 0, 0, 0, 0, 0xe1, 5, 0, 0, 5, 0, 6]);
        assert!(t.release_all().is_empty());
    }
}
