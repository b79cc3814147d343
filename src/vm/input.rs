//! Input translation: key names and text to QEMU qcodes, screen pixels to absolute pointer units.
//! Pure logic; the paced sending lives in `vm::typing`.

use thiserror::Error;

pub use super::keynames::parse_combo;

/// Longest text one `type` call accepts; longer text should be split by the caller so that a
/// lost connection or a failed session costs little.
pub const MAX_TEXT_LEN: usize = 4096;

#[derive(Debug, Error, PartialEq)]
pub enum InputError {
    #[error("unknown key name {name:?}{}", suggest(.suggestions))]
    UnknownKey {
        name: String,
        suggestions: Vec<String>,
    },
    #[error("empty key combination {0:?}: use names joined by '+', e.g. \"ctrl+s\", \"Return\", \"alt+Tab\"")]
    EmptyCombo(String),
    #[error("text has characters that cannot be typed: {}; control characters other than newline and tab cannot be typed", .0.join(", "))]
    Untypable(Vec<String>),
    #[error("text is {len} characters long; at most {max} per call")]
    TextTooLong { len: usize, max: usize },
}

fn suggest(s: &[String]) -> String {
    if s.is_empty() {
        "; names are xdotool/X keysym names such as Return, Escape, Tab, ctrl, alt, shift, super, F1..F12, Page_Up, a..z, 0..9".into()
    } else {
        format!("; did you mean {}?", s.join(", "))
    }
}

/// One key as QEMU names it (a QKeyCode string such as "ctrl", "a", "ret").
pub type QCode = &'static str;

/// A key press of one character, with or without shift held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stroke {
    pub key: QCode,
    pub shift: bool,
}

impl Stroke {
    /// Key events this stroke sends: its press and release, and shift's around them.
    pub fn events(&self) -> usize {
        if self.shift {
            4
        } else {
            2
        }
    }
}

/// The first run of `strokes` of at most `budget` key events (a stroke bigger than the budget
/// goes alone); typing takes one at a time, since its budget can change between bursts.
pub fn burst(strokes: &[Stroke], budget: usize) -> &[Stroke] {
    let mut events = 0;
    for (i, s) in strokes.iter().enumerate() {
        events += s.events();
        if i > 0 && events > budget {
            return &strokes[..i];
        }
    }
    strokes
}

/// Splits strokes into runs of at most `budget` key events, as typing sends them.
pub fn bursts(strokes: &[Stroke], budget: usize) -> Vec<&[Stroke]> {
    let mut out = Vec::new();
    let mut rest = strokes;
    while !rest.is_empty() {
        let b = burst(rest, budget);
        out.push(b);
        rest = &rest[b.len()..];
    }
    out
}

/// Characters of the US layout: (unshifted, shifted, qcode).
const CHAR_KEYS: &[(char, char, QCode)] = &[
    ('`', '~', "grave_accent"),
    ('1', '!', "1"),
    ('2', '@', "2"),
    ('3', '#', "3"),
    ('4', '$', "4"),
    ('5', '%', "5"),
    ('6', '^', "6"),
    ('7', '&', "7"),
    ('8', '*', "8"),
    ('9', '(', "9"),
    ('0', ')', "0"),
    ('-', '_', "minus"),
    ('=', '+', "equal"),
    ('[', '{', "bracket_left"),
    (']', '}', "bracket_right"),
    ('\\', '|', "backslash"),
    (';', ':', "semicolon"),
    ('\'', '"', "apostrophe"),
    (',', '<', "comma"),
    ('.', '>', "dot"),
    ('/', '?', "slash"),
    (' ', ' ', "spc"),
    ('\n', '\n', "ret"),
    ('\t', '\t', "tab"),
];

const LETTERS: [QCode; 26] = [
    "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p", "q", "r", "s",
    "t", "u", "v", "w", "x", "y", "z",
];

/// The stroke that types `c` on a US keyboard, if any.
pub fn stroke_for(c: char) -> Option<Stroke> {
    if c.is_ascii_lowercase() {
        return Some(Stroke {
            key: LETTERS[(c as u8 - b'a') as usize],
            shift: false,
        });
    }
    if c.is_ascii_uppercase() {
        return Some(Stroke {
            key: LETTERS[(c as u8 - b'A') as usize],
            shift: true,
        });
    }
    CHAR_KEYS.iter().find_map(|&(plain, shifted, key)| {
        if c == plain {
            Some(Stroke { key, shift: false })
        } else if c == shifted {
            Some(Stroke { key, shift: true })
        } else {
            None
        }
    })
}

/// Text to strokes; fails naming every character that cannot be typed.
pub fn strokes_for_text(text: &str) -> Result<Vec<Stroke>, InputError> {
    map_text(text, stroke_for)
}

/// What every way of typing text shares: the length cap, CRLF typed as one Return, and each
/// character `typed` has no way to type named once, so one refusal lists them all and the
/// caller fixes its text in one go.
pub(super) fn map_text<T>(
    text: &str,
    mut typed: impl FnMut(char) -> Option<T>,
) -> Result<Vec<T>, InputError> {
    let len = text.chars().count();
    if len > MAX_TEXT_LEN {
        return Err(InputError::TextTooLong {
            len,
            max: MAX_TEXT_LEN,
        });
    }
    let text = text.replace("\r\n", "\n");
    let mut bad: Vec<String> = Vec::new();
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match typed(c) {
            Some(t) => out.push(t),
            None => {
                let name = format!("{c:?} (U+{:04X})", c as u32);
                if !bad.contains(&name) {
                    bad.push(name);
                }
            }
        }
    }
    if bad.is_empty() {
        Ok(out)
    } else {
        Err(InputError::Untypable(bad))
    }
}

/// Screen pixel to QEMU's absolute axis range 0..=32767.
pub fn to_abs(px: u32, extent: u32) -> i64 {
    if extent <= 1 {
        return 0;
    }
    ((px as f64) * 32767.0 / ((extent - 1) as f64)).round() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_stay_within_the_event_budget() {
        let strokes = strokes_for_text("${#pw} > /tmp/pwlen").unwrap();
        let bursts = bursts(&strokes, 16);
        assert_eq!(bursts.concat(), strokes);
        for b in &bursts {
            assert!(b.iter().map(Stroke::events).sum::<usize>() <= 16, "{b:?}");
        }
        // "$ { # p w" fill the 16 events (4+4+4+2+2): "}" starts the next burst.
        assert_eq!(bursts[0].len(), 5);
        let big = Stroke {
            key: "a",
            shift: true,
        };
        assert_eq!(super::bursts(&[big; 3], 2).len(), 3);
    }

    #[test]
    fn every_printable_ascii_character_has_a_stroke() {
        for b in 0x20u8..=0x7e {
            assert!(
                stroke_for(b as char).is_some(),
                "no stroke for {:?}",
                b as char
            );
        }
        assert_eq!(
            stroke_for('A'),
            Some(Stroke {
                key: "a",
                shift: true
            })
        );
        assert_eq!(
            stroke_for('_'),
            Some(Stroke {
                key: "minus",
                shift: true
            })
        );
        assert_eq!(
            stroke_for(' '),
            Some(Stroke {
                key: "spc",
                shift: false
            })
        );
    }

    #[test]
    fn untypable_text_names_each_bad_character_once() {
        let err = strokes_for_text("héllo é ☃").unwrap_err();
        assert_eq!(
            err,
            InputError::Untypable(vec!["'é' (U+00E9)".into(), "'☃' (U+2603)".into()])
        );
        assert!(err.to_string().contains("U+2603"));
    }

    #[test]
    fn oversized_text_is_refused() {
        let err = strokes_for_text(&"a".repeat(MAX_TEXT_LEN + 1)).unwrap_err();
        assert!(matches!(err, InputError::TextTooLong { .. }));
        // The cap counts characters, not bytes.
        let err = map_text(&"é".repeat(MAX_TEXT_LEN + 1), Some).unwrap_err();
        assert_eq!(
            err,
            InputError::TextTooLong {
                len: MAX_TEXT_LEN + 1,
                max: MAX_TEXT_LEN
            }
        );
        assert!(map_text(&"é".repeat(MAX_TEXT_LEN), Some).is_ok());
    }

    #[test]
    fn crlf_is_one_return() {
        let strokes = strokes_for_text("a\r\nb\n").unwrap();
        let keys: Vec<QCode> = strokes.iter().map(|s| s.key).collect();
        assert_eq!(keys, ["a", "ret", "b", "ret"]);
        // A lone CR is a control character, refused like the others.
        assert_eq!(
            strokes_for_text("a\rb").unwrap_err(),
            InputError::Untypable(vec!["'\\r' (U+000D)".into()])
        );
    }

    #[test]
    fn absolute_axis_maps_edges_exactly() {
        assert_eq!(to_abs(0, 1280), 0);
        assert_eq!(to_abs(1279, 1280), 32767);
        assert_eq!(to_abs(640, 1281), 16384);
    }
}
