//! Typing any Unicode text. ASCII goes as today: US-layout key strokes through QMP. Any other
//! character is typed the way xdotool does it: a spare keycode is mapped to the character's
//! keysym (`U<hex>`) in the guest's X keymap through the guest agent (`xkbcomp`), then that key
//! is pressed through QMP; the guest's own mapping is put back after every call.
//!
//! The spare keys are keys a desktop without Japanese input or media keys does not use, among
//! those that really reach the guest: of QEMU's F13..F24 only F13..F15 arrived through its PS/2
//! keyboard (measured with the guest's evdev device), and neither did lang1/lang2 or the
//! Sun-style keys (again, props, undo, copy, paste...). So 16 distinct characters per mapping.
//! Keys now go to a virtio keyboard (`vm::typing`); the same 16 arrive as the same X keycodes
//! there (tests/e2e_unicode.rs).
//! Measured in the default guest (xterm in C.UTF-8): "ü東😀" mapped onto spare keys arrived as
//! the exact UTF-8 bytes `c3 bc e6 9d b1 f0 9f 98 80`.

use std::time::Duration;

use super::input::{stroke_for, InputError, QCode, Stroke, MAX_TEXT_LEN};
use super::{Vm, VmError};

/// Spare keys: QEMU qcode and the X keycode it arrives as (the guest's Linux keycode + 8,
/// as measured).
pub const SPARE_KEYS: [(QCode, u32); 16] = [
    ("f13", 191),
    ("f14", 192),
    ("f15", 193),
    ("henkan", 100),
    ("muhenkan", 102),
    ("katakanahiragana", 101),
    ("hiragana", 99),
    ("ro", 97),
    ("yen", 132),
    ("kp_comma", 129),
    ("kp_equals", 125),
    ("stop", 136),
    ("calculator", 148),
    ("mail", 163),
    ("computer", 165),
    ("ac_bookmarks", 164),
];

/// Pause before a new mapping, so keys of the previous ones still in the guest's queues are
/// read first.
const REMAP_PAUSE: Duration = Duration::from_millis(300);

/// Where the guest's own mapping of the spare keys is kept while they are borrowed.
const SAVED: &str = "/tmp/.deskvm-keymap.xkb";

/// One piece of text: a key of the US layout, or a character typed through a spare key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    Key(Stroke),
    Char(char),
}

/// Text to pieces; fails naming every character that cannot be typed (control characters
/// other than newline and tab).
pub fn pieces_for_text(text: &str) -> Result<Vec<Piece>, InputError> {
    let len = text.chars().count();
    if len > MAX_TEXT_LEN {
        return Err(InputError::TextTooLong {
            len,
            max: MAX_TEXT_LEN,
        });
    }
    let text = text.replace("\r\n", "\n");
    let mut bad: Vec<String> = Vec::new();
    let mut pieces = Vec::with_capacity(text.len());
    for c in text.chars() {
        match stroke_for(c) {
            Some(s) => pieces.push(Piece::Key(s)),
            None if !c.is_control() => pieces.push(Piece::Char(c)),
            None => {
                let name = format!("{c:?} (U+{:04X})", c as u32);
                if !bad.contains(&name) {
                    bad.push(name);
                }
            }
        }
    }
    if bad.is_empty() {
        Ok(pieces)
    } else {
        Err(InputError::Untypable(bad))
    }
}

/// One mapping: (spare key index, character) pairs.
pub type Mapping = Vec<(usize, char)>;

/// Spare-key assignment for a whole text's non-ASCII characters, in typing order: mappings
/// ("generations") of distinct characters, each as (key, character), and for each character
/// its generation and key. A text with at most 16 distinct characters needs one mapping. A
/// text with more is typed in generations of 8 that alternate between the two halves of the
/// spare keys: a key still queued in the guest when the next generation is mapped keeps its
/// character, since only the generation after next reuses its key. (Reusing keys at once lost
/// a character in 1 of 5 runs of 100 random characters from a 40-character pool; with one
/// mapping, 5 of 5 runs were exact.)
pub fn assign(chars: &[char]) -> (Vec<Mapping>, Vec<(usize, usize)>) {
    let mut distinct: Vec<char> = Vec::new();
    for &c in chars {
        if !distinct.contains(&c) {
            distinct.push(c);
        }
    }
    let half = SPARE_KEYS.len() / 2;
    let size = if distinct.len() <= SPARE_KEYS.len() {
        SPARE_KEYS.len()
    } else {
        half
    };
    let mut gens: Vec<Mapping> = Vec::new();
    let mut keys: Vec<(usize, usize)> = Vec::with_capacity(chars.len());
    for &c in chars {
        let current = gens
            .last_mut()
            .filter(|g| g.iter().any(|(_, k)| *k == c) || g.len() < size);
        let slot = match current {
            Some(g) => match g.iter().find(|(_, k)| *k == c) {
                Some((slot, _)) => *slot,
                None => {
                    let slot = g.first().map_or(0, |(s, _)| *s) + g.len();
                    g.push((slot, c));
                    slot
                }
            },
            None => {
                let base = if size == half {
                    (gens.len() % 2) * half
                } else {
                    0
                };
                gens.push(vec![(base, c)]);
                base
            }
        };
        keys.push((gens.len() - 1, slot));
    }
    (gens, keys)
}

/// Rewrites an `xkbcomp -xkb` keymap dump: the keys whose keycodes `want` names (`191=U00E9`,
/// space-separated) get that keysym on both levels, in place or, for keys the dump gives no
/// symbols, added at the end of `xkb_symbols`.
const REWRITE: &str = r#"
BEGIN { n = split(want, m, " "); for (i = 1; i <= n; i++) { split(m[i], kv, "="); code[kv[1]] = kv[2] } }
/^ *<[^>]+> *= *[0-9]+;/ { c = $3; sub(";", "", c); if (c in code) { sym[$1] = code[c]; todo[$1] = 1; found[c] = 1 } }
/^xkb_symbols/ { insym = 1 }
insym && /^ *key <[^>]+>/ {
  match($0, /<[^>]+>/); k = substr($0, RSTART, RLENGTH)
  if (k in sym) { print "    key " k " { [ " sym[k] ", " sym[k] " ] };"; delete todo[k]; skip = ($0 !~ /};/); next }
}
skip { if ($0 ~ /};/) skip = 0; next }
insym && /^};/ { for (k in todo) print "    key " k " { [ " sym[k] ", " sym[k] " ] };"; insym = 0 }
{ print }
END { for (c in code) if (!(c in found)) { print "keycode " c " has no name in the keymap" > "/dev/stderr"; exit 1 } }
"#;

/// Waits (at most 5 s) until the window manager has taken a keymap change in: its CPU time has
/// moved (it is handling the change) and then stood still for two samples in a row. Every
/// keymap change makes it re-read the keymap and grab its bindings again: openbox spends ~0.5 s
/// of CPU on that under TCG, and a drag that starts meanwhile is lost (measured: with xmodmap,
/// one change per key, drags failed for seconds after typing). Stillness alone is not enough:
/// on busy vCPUs the window manager may not have run yet. One that never moves is taken as done
/// after 1.5 s of stillness.
const WM_IDLE: &str =
    "p=$(pgrep -x -d ' ' 'openbox|xfwm4|mutter|marco|metacity|kwin_x11|fluxbox|icewm'); \
    [ -z \"$p\" ] || { a=; same=0; moved=0; t0=$(date +%s%N); end=$(($(date +%s) + 5)); \
    while [ $(date +%s) -lt $end ]; do \
    b=$(cat $(for q in $p; do echo /proc/$q/stat; done) | awk '{t += $14 + $15} END {print t}'); \
    if [ \"$a\" = \"$b\" ]; then same=$((same + 1)); else [ -n \"$a\" ] && moved=1; same=0; fi; \
    waited=$((($(date +%s%N) - t0) / 1000000)); \
    [ $same -ge 2 ] && { [ $moved = 1 ] || [ $waited -ge 1500 ]; } && break; \
    a=$b; sleep 0.15; done; }";

/// The guest command that maps a generation's characters onto their spare keys, in one keymap
/// change (`xkbcomp` uploads the whole map: one change however many keys, where `xmodmap`
/// makes one per key), saving the guest's own keymap first, once.
pub fn map_script(generation: &[(usize, char)]) -> String {
    let want: Vec<String> = generation
        .iter()
        .map(|&(slot, c)| format!("{}=U{:04X}", SPARE_KEYS[slot].1, c as u32))
        .collect();
    format!(
        "set -e; [ -s {SAVED} ] || xkbcomp -w 0 -xkb \"$DISPLAY\" {SAVED}; \
         awk -v want='{}' '{REWRITE}' {SAVED} > {SAVED}.new; \
         xkbcomp -w 0 {SAVED}.new \"$DISPLAY\"",
        want.join(" ")
    )
}

/// Puts the guest's own keymap back and waits until the window manager has taken it in.
pub fn restore_script() -> String {
    format!(
        "[ -s {SAVED} ] || exit 0; xkbcomp -w 0 {SAVED} \"$DISPLAY\" && rm -f {SAVED} {SAVED}.new; \
         s=$?; {WM_IDLE}; exit $s"
    )
}

impl Vm {
    /// Types text pieces in order: runs of US-layout keys as strokes, runs of other characters
    /// through the spare keys; the guest's keymap is restored however typing ends.
    pub async fn type_pieces(&self, pieces: &[Piece]) -> Result<(), VmError> {
        let typed = self.type_runs(pieces).await;
        if pieces.iter().any(|p| matches!(p, Piece::Char(_))) {
            // Keys still queued in the guest are read with the keymap of the moment: let them
            // through before the map changes back.
            tokio::time::sleep(self.drain_time(pieces.len())).await;
            let restored = self.exec(&restore_script(), Duration::from_secs(10)).await;
            typed?;
            // The text is typed: a keymap that could not be put back is said in the log, not
            // as a failed call the agent would repeat.
            match restored {
                Ok(out) if out.exit_code == 0 => {}
                Ok(out) => {
                    tracing::warn!(stderr = %out.stderr.trim(), "could not restore the guest keymap")
                }
                Err(e) => tracing::warn!(error = %e, "could not restore the guest keymap"),
            }
            return Ok(());
        }
        typed
    }

    fn drain_time(&self, keys: usize) -> Duration {
        Duration::from_millis(150 + 2 * keys.min(500) as u64)
    }

    async fn type_runs(&self, pieces: &[Piece]) -> Result<(), VmError> {
        let chars: Vec<char> = pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Char(c) => Some(*c),
                Piece::Key(_) => None,
            })
            .collect();
        let (gens, keys) = assign(&chars);
        let mut keys = keys.into_iter();
        let mut mapped: Option<usize> = None;
        let mut i = 0;
        while i < pieces.len() {
            // The longest stretch that needs no new mapping: US-layout keys, and characters of
            // the generation in place (or the next one, mapped first).
            let mut strokes: Vec<Stroke> = Vec::new();
            while i < pieces.len() {
                match pieces[i] {
                    Piece::Key(s) => strokes.push(s),
                    Piece::Char(_) => {
                        let (generation, slot) = keys.clone().next().expect("a key per character");
                        if mapped != Some(generation) {
                            if !strokes.is_empty() {
                                break;
                            }
                            if mapped.is_some() {
                                // The keys this mapping overwrites were typed two mappings ago.
                                tokio::time::sleep(REMAP_PAUSE).await;
                            }
                            let out = self
                                .exec(&map_script(&gens[generation]), Duration::from_secs(10))
                                .await?;
                            if out.exit_code != 0 {
                                return Err(VmError::Keymap(out.stderr.trim().to_string()));
                            }
                            mapped = Some(generation);
                        }
                        keys.next();
                        strokes.push(Stroke {
                            key: SPARE_KEYS[slot].0,
                            shift: false,
                        });
                    }
                }
                i += 1;
            }
            self.type_strokes(&strokes).await?;
        }
        Ok(())
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
    fn one_mapping_up_to_sixteen_then_alternating_halves() {
        let few: Vec<char> = "αβγδεζηθικλμνξοπαα".chars().collect();
        let (gens, keys) = assign(&few);
        assert_eq!(gens.len(), 1);
        assert_eq!(gens[0].len(), 16);
        assert_eq!(keys[16], keys[0]);
        let many: Vec<char> = "αβγδεζηθικλμνξοπρσα".chars().collect();
        let (gens, keys) = assign(&many);
        assert_eq!(gens.len(), 3);
        assert_eq!(gens[0][0].0, 0);
        assert_eq!(gens[1][0].0, 8, "the next generation takes the other half");
        assert_eq!(gens[2][0].0, 0);
        assert!(keys.iter().all(|(_, slot)| *slot < 16));
        let (gens, keys) = assign(&['é', 'x', 'é']);
        assert_eq!(keys[0], keys[2]);
        let script = map_script(&gens[0]);
        assert!(script.contains("want='191=U00E9 192=U0078'"), "{script}");
        assert_eq!(
            script.matches(".new \"$DISPLAY\"").count(),
            1,
            "one keymap change: {script}"
        );
    }
}
