//! The guest-side half of Unicode typing (`vm::unicode`): the spare keys characters go on, and
//! the shell scripts the guest agent runs to lend them in the guest's X keymap, to give the
//! keymap back, and to wait until the window manager has taken a keymap change in.
//!
//! What one keymap change costs, measured in the default guest under TCG (2 vCPUs):
//! - openbox re-reads the keymap and grabs its key bindings again on every MappingNotify: 1.2–1.5 s
//!   of CPU per change, whether `xkbcomp` uploaded the whole map or `xmodmap` changed one key;
//! - dumping the map (`xkbcomp -xkb`): 330–510 ms; uploading it as text: 310–440 ms; uploading
//!   it precompiled (`.xkm`) without its geometry section: ~210 ms; `xmodmap -pm -pke`: ~100 ms.
//!
//! So a call makes two changes (lend, give back) whatever its text, keeps the guest's own map
//! (text to rewrite, and precompiled to give back) across calls while a fingerprint of the
//! server's map says it is still current, and does not wait for the window manager inside the
//! call: the next input that the window manager could see half-rebound waits instead
//! ([`settle_script`]).

use std::time::Duration;

use super::input::{QCode, Stroke};

/// Spare keys: QEMU qcode and the X keycode it arrives as (the guest's Linux keycode + 8).
/// Every qcode QEMU maps to a Linux key reaches the guest through the virtio keyboard (it
/// advertises them all); these are the ones a US desktop without Japanese or Korean input,
/// media keys or Sun keys does not use. Left out: the power, sleep and wake keys (logind acts on
/// them), Menu/Compose, Linefeed, Pause and every key of the US layout or a modifier.
/// All arrive as listed (tests/e2e_unicode.rs types a character on each, on both levels).
pub const SPARE_KEYS: [(QCode, u32); 50] = [
    ("f13", 191),
    ("f14", 192),
    ("f15", 193),
    ("f16", 194),
    ("f17", 195),
    ("f18", 196),
    ("f19", 197),
    ("f20", 198),
    ("f21", 199),
    ("f22", 200),
    ("f23", 201),
    ("f24", 202),
    ("henkan", 100),
    ("muhenkan", 102),
    ("katakanahiragana", 101),
    ("hiragana", 99),
    ("ro", 97),
    ("yen", 132),
    ("lang1", 130),
    ("lang2", 131),
    ("kp_comma", 129),
    ("kp_equals", 125),
    ("stop", 136),
    ("again", 137),
    ("props", 138),
    ("undo", 139),
    ("front", 140),
    ("copy", 141),
    ("open", 142),
    ("paste", 143),
    ("find", 144),
    ("cut", 145),
    ("help", 146),
    ("calculator", 148),
    ("mail", 163),
    ("ac_bookmarks", 164),
    ("computer", 165),
    ("ac_back", 166),
    ("ac_forward", 167),
    ("audionext", 171),
    ("audioplay", 172),
    ("audioprev", 173),
    ("audiostop", 174),
    ("ac_home", 180),
    ("ac_refresh", 181),
    ("mediaselect", 234),
    ("audiomute", 121),
    ("volumedown", 122),
    ("volumeup", 123),
    ("menu", 147),
];

/// Characters one mapping holds: every spare key on its two levels (shift selects the second).
pub const CAPACITY: usize = 2 * SPARE_KEYS.len();

/// A place for one character: a spare key (index into [`SPARE_KEYS`]) on one of its levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub key: usize,
    pub shift: bool,
}

impl Slot {
    pub fn stroke(self) -> Stroke {
        Stroke {
            key: SPARE_KEYS[self.key].0,
            shift: self.shift,
        }
    }
}

/// Slots in the order they are taken: the first level of every key in `keys` before any second
/// level, since a shifted key costs twice the key events.
pub fn pool(keys: std::ops::Range<usize>) -> Vec<Slot> {
    let level = |shift| keys.clone().map(move |key| Slot { key, shift });
    level(false).chain(level(true)).collect()
}

/// The keys a mapping defines: X keycode and its characters by level (a second level only
/// where one is mapped; `'\\0'` stands for a level with nothing on it).
pub fn key_defs(mapping: &[(Slot, char)]) -> Vec<(u32, Vec<char>)> {
    let mut keys: Vec<(usize, [Option<char>; 2])> = Vec::new();
    for &(slot, c) in mapping {
        let i = match keys.iter().position(|(k, _)| *k == slot.key) {
            Some(i) => i,
            None => {
                keys.push((slot.key, [None, None]));
                keys.len() - 1
            }
        };
        keys[i].1[usize::from(slot.shift)] = Some(c);
    }
    keys.into_iter()
        .map(|(k, [plain, shifted])| {
            // U0000 is NoSymbol: a level nothing of this text is on.
            let mut chars = vec![plain.unwrap_or('\0')];
            chars.extend(shifted);
            (SPARE_KEYS[k].1, chars)
        })
        .collect()
}

/// Where the guest's own keymap is kept: `.xkb` (text without geometry, rewritten per call),
/// `.xkm` (the same, compiled: what gives the map back), `.sum` (the fingerprint of the server's
/// map it was dumped from) and `.lent` (present while spare keys carry characters: the server
/// does not hold the guest's own map, so it must not be dumped as such).
const SAVED: &str = "/tmp/.deskvm-keymap";

/// Rewrites an `xkbcomp -xkb` keymap dump: the keys whose keycodes `want` names (`191=U00E9`
/// for one level, `191=U00E9:U00C9` for two, space-separated) get those keysyms, in place or,
/// for keys the dump gives no symbols, added at the end of `xkb_symbols`. Two-level keys get the
/// TWO_LEVEL type explicitly: left to itself xkbcomp picks ALPHABETIC for a lower/upper case
/// pair, which Caps Lock would also switch.
const REWRITE: &str = r#"
function def(s,  l) { split(s, l, ":"); if (l[2] == "") return "{ [ " l[1] " ] };"; return "{ type= \"TWO_LEVEL\", [ " l[1] ", " l[2] " ] };" }
BEGIN { n = split(want, m, " "); for (i = 1; i <= n; i++) { split(m[i], kv, "="); code[kv[1]] = kv[2] } }
/^ *<[^>]+> *= *[0-9]+;/ { c = $3; sub(";", "", c); if (c in code) { sym[$1] = code[c]; todo[$1] = 1; found[c] = 1 } }
/^xkb_symbols/ { insym = 1 }
insym && /^ *key <[^>]+>/ {
  match($0, /<[^>]+>/); k = substr($0, RSTART, RLENGTH)
  if (k in sym) { print "    key " k " " def(sym[k]); delete todo[k]; skip = ($0 !~ /};/); next }
}
skip { if ($0 ~ /};/) skip = 0; next }
insym && /^};/ { for (k in todo) print "    key " k " " def(sym[k]); insym = 0 }
{ print }
END { for (c in code) if (!(c in found)) { print "keycode " c " has no name in the keymap" > "/dev/stderr"; exit 1 } }
"#;

/// Drops the `xkb_geometry` section of a dump: the server keeps its geometry when an upload has
/// none, and uploading it doubled the time of an upload.
const NO_GEOMETRY: &str = "/^xkb_geometry/ { g = 1 } !g { print } g && /^};/ { g = 0 }";

/// The sum of the window manager's CPU time (clock ticks), or nothing without a known one.
const WM_CPU: &str =
    "wm=$(pgrep -x -d ' ' 'openbox|xfwm4|mutter|marco|metacity|kwin_x11|fluxbox|icewm'); \
    cpu() { [ -n \"$wm\" ] && cat $(for q in $wm; do echo /proc/$q/stat; done) 2>/dev/null | \
    awk '{t += $14 + $15; if ($3 == \"R\") r = 1} END {print t (r ? \"R\" : \"\")}'; }";

/// The guest command that puts `keys` (X keycode, keysym per level) on the spare keys in one
/// keymap change. The guest's own map is dumped first, unless the copy kept from an earlier
/// call is still current (same `xmodmap -pm -pke` fingerprint, taken while the kept copy is
/// rewritten) or the keys are lent already (a map that was not given back is not the guest's).
pub fn lend_script(keys: &[(u32, Vec<char>)]) -> String {
    let want: Vec<String> = keys
        .iter()
        .map(|(code, chars)| {
            let syms: Vec<String> = chars
                .iter()
                .map(|&c| match c {
                    '\0' => "NoSymbol".to_string(),
                    c => format!("U{:04X}", c as u32),
                })
                .collect();
            format!("{code}={}", syms.join(":"))
        })
        .collect();
    format!(
        "set -e; S={SAVED}; \
         rewrite() {{ awk -v want='{}' '{REWRITE}' $S.xkb > $S.new; }}; \
         if [ -e $S.lent ]; then rewrite; else \
           xmodmap -pm -pke | cksum > $S.now & rewrite 2>/dev/null || rm -f $S.xkm; wait $!; \
           if [ ! -s $S.xkm ] || ! cmp -s $S.now $S.sum; then \
             xkbcomp -w 0 -xkb \"$DISPLAY\" $S.dump; \
             awk '{NO_GEOMETRY}' $S.dump > $S.xkb; \
             xkbcomp -w 0 $S.xkb $S.xkm; mv $S.now $S.sum; rewrite; \
           fi; \
         fi; \
         touch $S.lent; xkbcomp -w 0 $S.new \"$DISPLAY\"",
        want.join(" ")
    )
}

/// Gives the guest its own keymap back (when lent) without waiting for the window manager;
/// prints the window manager's CPU time from just before, for [`settle_script`].
pub fn give_back_script() -> String {
    format!(
        "S={SAVED}; [ -e $S.lent ] || exit 0; {WM_CPU}; cpu; \
         xkbcomp -w 0 $S.xkm \"$DISPLAY\" && rm -f $S.lent"
    )
}

/// Waits (at most 5 s) until the window manager has taken a keymap change in: its CPU time has
/// moved from `before` (what [`give_back_script`] printed; it is handling the change) and then
/// stood still, and not runnable, for two samples in a row. A drag that started while openbox
/// re-grabbed its keys after a change was lost (measured with xmodmap, one change per key:
/// drags failed for seconds after typing), and a key binding pressed meanwhile can miss its
/// grab. Stillness alone is not enough: on busy vCPUs the window manager may not have run yet,
/// so one that never moves is taken as done only 1.5 s after the change (`since` ago).
pub fn settle_script(before: &str, since: Duration) -> String {
    let before: String = before.chars().filter(char::is_ascii_digit).collect();
    format!(
        "{WM_CPU}; [ -z \"$wm\" ] && exit 0; a=$(cpu); moved=0; [ \"${{a%R}}\" = '{before}' ] || moved=1; \
         same=0; t0=$(date +%s%N); end=$(($(date +%s) + 5)); \
         while [ $(date +%s) -lt $end ]; do sleep 0.15; b=$(cpu); \
           if [ \"$a\" = \"$b\" ] && [ \"${{b%R}}\" = \"$b\" ]; then same=$((same + 1)); else moved=1; same=0; fi; a=$b; \
           waited=$(( {} + ($(date +%s%N) - t0) / 1000000 )); \
           [ $same -ge 2 ] && {{ [ $moved = 1 ] || [ $waited -ge 1500 ]; }} && break; \
         done; true",
        since.as_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_change_for_any_number_of_keys_and_levels() {
        let s = lend_script(&[(191, vec!['é']), (192, vec!['ä', 'Ä'])]);
        assert!(s.contains("want='191=U00E9 192=U00E4:U00C4'"), "{s}");
        assert_eq!(s.matches("$S.new \"$DISPLAY\"").count(), 1, "{s}");
        let back = give_back_script();
        assert_eq!(back.matches("$S.xkm \"$DISPLAY\"").count(), 1, "{back}");
        assert!(!back.contains("sleep"), "giving back does not wait: {back}");
    }

    #[test]
    fn settling_takes_only_a_cpu_figure_from_the_guest() {
        let s = settle_script("123R'; reboot '", Duration::from_millis(700));
        assert!(s.contains("= '123' ]"), "{s}");
        assert!(s.contains("waited=$(( 700 +"), "{s}");
    }
}
