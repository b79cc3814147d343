//! Typing any Unicode text. ASCII goes as today: US-layout key strokes through QMP. Any other
//! character is typed the way xdotool does it: a spare keycode is mapped to the character's
//! keysym (`U<hex>`) in the guest's X keymap through the guest agent (`xkbcomp`, `vm::keymap`),
//! then that key is pressed through QMP; the guest's own mapping is put back after every call.
//!
//! What bounds the rate is the number of keymap changes, not of keys: each costs an upload and
//! makes the window manager re-grab its bindings (~1.3 s of guest CPU for openbox under TCG).
//! So one mapping holds a whole text's characters: 50 spare keys on two levels, 100 distinct
//! characters, and a call makes two changes (lend, give back) whatever it types. Through QEMU's
//! PS/2 keyboard only 16 spare keys arrived; the virtio keyboard typing uses now delivers every
//! key QEMU knows (tests/e2e_unicode.rs types on all 100 slots).
//! Measured in the default guest (xterm in C.UTF-8): "ü東😀" mapped onto spare keys arrived as
//! the exact UTF-8 bytes `c3 bc e6 9d b1 f0 9f 98 80`.

use std::time::{Duration, Instant};

use super::input::{map_text, stroke_for, InputError, Stroke};
use super::keymap::{self, key_defs, pool, Slot};
pub use super::keymap::{CAPACITY, SPARE_KEYS};
use super::{Vm, VmError};

/// Pause before a new mapping within one text, so keys of the previous ones still in the
/// guest's queues are read first.
const REMAP_PAUSE: Duration = Duration::from_millis(300);

/// One piece of text: a key of the US layout, or a character typed through a spare key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    Key(Stroke),
    Char(char),
}

/// Text to pieces; fails naming every character that cannot be typed (control characters
/// other than newline and tab).
pub fn pieces_for_text(text: &str) -> Result<Vec<Piece>, InputError> {
    map_text(text, |c| match stroke_for(c) {
        Some(s) => Some(Piece::Key(s)),
        None if !c.is_control() => Some(Piece::Char(c)),
        None => None,
    })
}

/// One mapping: the characters on spare-key slots.
pub type Mapping = Vec<(Slot, char)>;

/// Spare-key assignment for a whole text's non-ASCII characters, in typing order: mappings
/// ("generations") of distinct characters, each as (slot, character), and for each character
/// its generation and slot. A text with at most [`CAPACITY`] distinct characters needs one
/// mapping. A text with more is typed in generations that alternate between the two halves of
/// the spare keys, and each mapping keeps the previous generation's characters: a key still
/// queued in the guest when the next generation is mapped keeps its character, since only the
/// generation after next reuses its key. (Reusing keys at once lost a character in 1 of 5 runs
/// of 100 random characters from a 40-character pool; with one mapping, 5 of 5 were exact.)
pub fn assign(chars: &[char]) -> (Vec<Mapping>, Vec<(usize, Slot)>) {
    let mut distinct: Vec<char> = Vec::new();
    for &c in chars {
        if !distinct.contains(&c) {
            distinct.push(c);
        }
    }
    let half = SPARE_KEYS.len() / 2;
    let pools = if distinct.len() <= CAPACITY {
        vec![pool(0..SPARE_KEYS.len())]
    } else {
        vec![pool(0..half), pool(half..SPARE_KEYS.len())]
    };
    let mut gens: Vec<Mapping> = Vec::new();
    let mut slots: Vec<(usize, Slot)> = Vec::with_capacity(chars.len());
    for &c in chars {
        let known = gens
            .last()
            .and_then(|g| g.iter().find(|(_, k)| *k == c).map(|(s, _)| *s));
        let slot = match known {
            Some(slot) => slot,
            None => {
                let full = gens
                    .last()
                    .is_none_or(|g| g.len() == pools[(gens.len() - 1) % pools.len()].len());
                if full {
                    gens.push(Vec::new());
                }
                let pool = &pools[(gens.len() - 1) % pools.len()];
                let g = gens.last_mut().expect("a generation");
                let slot = pool[g.len()];
                g.push((slot, c));
                slot
            }
        };
        slots.push((gens.len() - 1, slot));
    }
    (gens, slots)
}

/// When the guest's own keymap went back, and the window manager's CPU time just before: what
/// the next input that the window manager handles waits on (see [`Vm::settle_keymap`]).
#[derive(Debug, Clone)]
pub struct GivenBack {
    at: Instant,
    wm_cpu: String,
}

/// The longest wait between polls for a keymap script's end (a lend takes ~0.5 s).
const KEYMAP_POLL: Duration = Duration::from_millis(15);

/// Past this, a window manager has long taken a keymap change in (it needed ~1.5 s of CPU).
const SETTLED_AFTER: Duration = Duration::from_secs(6);

impl Vm {
    /// Types text pieces in order: runs of US-layout keys as strokes, runs of other characters
    /// through the spare keys; the guest's keymap is given back however typing ends.
    pub async fn type_pieces(&self, pieces: &[Piece]) -> Result<(), VmError> {
        let typed = self.type_runs(pieces).await;
        if !pieces.iter().any(|p| matches!(p, Piece::Char(_))) {
            return typed;
        }
        // Keys X has handled may still wait in the client's queue, where they are read with
        // the keymap of the moment: let them through before the map changes back.
        let confirmed = self.keyboard.lock().await.confirms();
        tokio::time::sleep(drain_time(pieces.len(), confirmed)).await;
        let given = self.keymap_exec(&keymap::give_back_script()).await;
        typed?;
        // The text is typed: a keymap that could not be put back is said in the log, not as a
        // failed call the agent would repeat.
        match given {
            Ok(out) if out.exit_code == 0 => {
                self.keyboard.lock().await.given_back = Some(GivenBack {
                    at: Instant::now(),
                    wm_cpu: out.stdout.trim().to_string(),
                });
            }
            Ok(out) => {
                tracing::warn!(stderr = %out.stderr.trim(), "could not restore the guest keymap")
            }
            Err(e) => tracing::warn!(error = %e, "could not restore the guest keymap"),
        }
        Ok(())
    }

    /// Before input the window manager handles (pointer buttons, drags, key combinations): waits
    /// until it has taken in the keymap a Unicode `type` gave back, if that was recent.
    pub async fn settle_keymap(&self) -> Result<(), VmError> {
        let Some(given) = self.keyboard.lock().await.given_back.take() else {
            return Ok(());
        };
        let since = given.at.elapsed();
        if since >= SETTLED_AFTER {
            return Ok(());
        }
        let script = keymap::settle_script(&given.wm_cpu, since);
        if let Err(e) = self.exec(&script, Duration::from_secs(10)).await {
            tracing::warn!(error = %e, "could not watch the window manager take the keymap in");
        }
        Ok(())
    }

    async fn type_runs(&self, pieces: &[Piece]) -> Result<(), VmError> {
        let chars: Vec<char> = pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Char(c) => Some(*c),
                Piece::Key(_) => None,
            })
            .collect();
        let (gens, slots) = assign(&chars);
        let mut slots = slots.into_iter().peekable();
        let mut mapped: Option<usize> = None;
        let mut i = 0;
        while i < pieces.len() {
            // The longest stretch that needs no new mapping: US-layout keys, and characters of
            // the generation in place (or the next one, mapped first).
            let mut strokes: Vec<Stroke> = Vec::new();
            while i < pieces.len() {
                if let Piece::Key(s) = pieces[i] {
                    strokes.push(s);
                    i += 1;
                    continue;
                }
                let &(generation, slot) = slots.peek().expect("a slot per character");
                if mapped != Some(generation) {
                    if !strokes.is_empty() {
                        break;
                    }
                    self.lend(&gens, generation, mapped.is_some()).await?;
                    mapped = Some(generation);
                }
                slots.next();
                strokes.push(slot.stroke());
                i += 1;
            }
            self.type_strokes(&strokes).await?;
        }
        Ok(())
    }

    /// Maps generation `g` (and the one before it, whose keys may still be queued) in one
    /// keymap change.
    async fn lend(&self, gens: &[Mapping], g: usize, remap: bool) -> Result<(), VmError> {
        if remap {
            // The keys this mapping overwrites were typed two mappings ago.
            tokio::time::sleep(REMAP_PAUSE).await;
        }
        let mut mapping = gens[g].clone();
        if g > 0 {
            mapping.extend(gens[g - 1].iter().copied());
        }
        let out = self
            .exec(
                &keymap::lend_script(&key_defs(&mapping)),
                Duration::from_secs(10),
            )
            .await?;
        if out.exit_code != 0 {
            return Err(VmError::Keymap(out.stderr.trim().to_string()));
        }
        Ok(())
    }
}

impl Vm {
    /// Runs a keymap script in the guest, polled closely: it is on the typing call's path.
    async fn keymap_exec(&self, script: &str) -> Result<super::qga::ExecOutput, VmError> {
        Ok(self
            .agent(Duration::from_secs(30))
            .await?
            .sh_polled(script, Duration::from_secs(10), None, KEYMAP_POLL)
            .await?)
    }
}

/// How long keys may still be on their way to the application once typing returned. With X's
/// confirmation only the client's own queue is left (a terminal had read 2,000 typed characters
/// by the first look, ~50 ms after the call's end; giving the map back takes another ~100 ms
/// before its upload starts); without it, the guest's queues too.
fn drain_time(keys: usize, confirmed: bool) -> Duration {
    if confirmed {
        Duration::from_millis(50 + keys.min(400) as u64 / 4)
    } else {
        Duration::from_millis(150 + 2 * keys.min(500) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_stays_keys_and_the_rest_goes_through_spare_keys() {
        let p = pieces_for_text("Mü\n東").unwrap();
        assert!(matches!(p[0], Piece::Key(_)));
        assert_eq!(p[1], Piece::Char('ü'));
        assert!(matches!(p[2], Piece::Key(_)));
        assert_eq!(p[3], Piece::Char('東'));
        let err = pieces_for_text("a\u{7}b\u{1b}").unwrap_err();
        assert!(
            err.to_string().contains("U+0007") && err.to_string().contains("U+001B"),
            "{err}"
        );
    }

    #[test]
    fn every_spare_key_is_a_qcode_and_a_distinct_keycode() {
        for (i, (q, code)) in SPARE_KEYS.iter().enumerate() {
            crate::vm::key_event(q, true);
            assert!(
                SPARE_KEYS[..i].iter().all(|(p, c)| p != q && c != code),
                "{q} twice"
            );
        }
    }

    fn distinct(n: u32) -> Vec<char> {
        (0..n)
            .map(|i| char::from_u32(0x4e00 + i).unwrap())
            .collect()
    }

    #[test]
    fn one_mapping_up_to_capacity_first_levels_first() {
        let mut text = distinct(CAPACITY as u32);
        text.push(text[0]);
        let (gens, slots) = assign(&text);
        assert_eq!(gens.len(), 1);
        assert_eq!(gens[0].len(), CAPACITY);
        assert_eq!(slots[CAPACITY], slots[0]);
        let keys = SPARE_KEYS.len();
        assert!(slots[..keys].iter().all(|(_, s)| !s.shift));
        assert!(slots[keys..CAPACITY].iter().all(|(_, s)| s.shift));
        let defs = key_defs(&gens[0]);
        assert_eq!(defs.len(), keys);
        assert_eq!(defs[0], (191, vec![text[0], text[keys]]));
        // 40 distinct: one level, no shifted key.
        let (gens, slots) = assign(&distinct(40));
        assert_eq!(gens.len(), 1);
        assert!(slots.iter().all(|(_, s)| !s.shift));
    }

    #[test]
    fn more_than_capacity_alternates_halves_keeping_the_previous_generation() {
        let (gens, slots) = assign(&distinct(CAPACITY as u32 + 1));
        let half = SPARE_KEYS.len() / 2;
        assert_eq!(gens.len(), 3);
        assert_eq!(gens[0].len(), CAPACITY / 2);
        assert!(gens[0].iter().all(|(s, _)| s.key < half));
        assert!(gens[1].iter().all(|(s, _)| s.key >= half));
        assert!(gens[2].iter().all(|(s, _)| s.key < half));
        assert_eq!(slots.last().unwrap().0, 2);
        let (_, slots) = assign(&['é', 'x', 'é']);
        assert_eq!(slots[0], slots[2]);
    }
}
