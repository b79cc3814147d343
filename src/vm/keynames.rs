//! Key names for `key` and combinations: xdotool/X keysym names and common aliases to QEMU
//! qcodes, and close matches for a name that is not one.

use super::input::{stroke_for, InputError, QCode};

/// Named keys: lower-cased xdotool/X keysym names and common aliases → qcode.
const NAMED_KEYS: &[(&str, QCode)] = &[
    ("ctrl", "ctrl"),
    ("control", "ctrl"),
    ("control_l", "ctrl"),
    ("ctrl_l", "ctrl"),
    ("control_r", "ctrl_r"),
    ("ctrl_r", "ctrl_r"),
    ("shift", "shift"),
    ("shift_l", "shift"),
    ("shift_r", "shift_r"),
    ("alt", "alt"),
    ("alt_l", "alt"),
    ("option", "alt"),
    ("alt_r", "alt_r"),
    ("altgr", "alt_r"),
    ("iso_level3_shift", "alt_r"),
    ("super", "meta_l"),
    ("super_l", "meta_l"),
    ("meta", "meta_l"),
    ("meta_l", "meta_l"),
    ("win", "meta_l"),
    ("windows", "meta_l"),
    ("cmd", "meta_l"),
    ("command", "meta_l"),
    ("super_r", "meta_r"),
    ("meta_r", "meta_r"),
    ("return", "ret"),
    ("enter", "ret"),
    ("ret", "ret"),
    ("kp_enter", "kp_enter"),
    ("escape", "esc"),
    ("esc", "esc"),
    ("tab", "tab"),
    ("iso_left_tab", "tab"),
    ("space", "spc"),
    ("spc", "spc"),
    ("backspace", "backspace"),
    ("delete", "delete"),
    ("del", "delete"),
    ("insert", "insert"),
    ("ins", "insert"),
    ("home", "home"),
    ("end", "end"),
    ("page_up", "pgup"),
    ("pageup", "pgup"),
    ("pgup", "pgup"),
    ("prior", "pgup"),
    ("page_down", "pgdn"),
    ("pagedown", "pgdn"),
    ("pgdn", "pgdn"),
    ("next", "pgdn"),
    ("up", "up"),
    ("down", "down"),
    ("left", "left"),
    ("right", "right"),
    // The browser's names (OpenAI's computer-use keypress uses them).
    ("arrowup", "up"),
    ("arrowdown", "down"),
    ("arrowleft", "left"),
    ("arrowright", "right"),
    ("caps_lock", "caps_lock"),
    ("capslock", "caps_lock"),
    ("num_lock", "num_lock"),
    ("scroll_lock", "scroll_lock"),
    ("print", "print"),
    ("sysrq", "sysrq"),
    ("pause", "pause"),
    ("menu", "menu"),
    ("ro", "ro"),
    ("minus", "minus"),
    ("equal", "equal"),
    ("bracketleft", "bracket_left"),
    ("bracketright", "bracket_right"),
    ("backslash", "backslash"),
    ("semicolon", "semicolon"),
    ("apostrophe", "apostrophe"),
    ("grave", "grave_accent"),
    ("comma", "comma"),
    ("period", "dot"),
    ("slash", "slash"),
    ("kp_add", "kp_add"),
    ("kp_subtract", "kp_subtract"),
    ("kp_multiply", "kp_multiply"),
    ("kp_divide", "kp_divide"),
];

/// Keysym names of shifted characters; they press shift themselves.
const SHIFTED_NAMES: &[(&str, char)] = &[
    ("plus", '+'),
    ("at", '@'),
    ("exclam", '!'),
    ("numbersign", '#'),
    ("dollar", '$'),
    ("percent", '%'),
    ("asciicircum", '^'),
    ("ampersand", '&'),
    ("asterisk", '*'),
    ("parenleft", '('),
    ("parenright", ')'),
    ("underscore", '_'),
    ("braceleft", '{'),
    ("braceright", '}'),
    ("bar", '|'),
    ("colon", ':'),
    ("quotedbl", '"'),
    ("less", '<'),
    ("greater", '>'),
    ("question", '?'),
    ("asciitilde", '~'),
];

fn lookup_name(name: &str) -> Option<Vec<QCode>> {
    let lower = name.to_ascii_lowercase();
    if let Some(&(_, q)) = NAMED_KEYS.iter().find(|(n, _)| *n == lower) {
        return Some(vec![q]);
    }
    if let Some(n) = lower.strip_prefix('f').and_then(|d| d.parse::<u8>().ok()) {
        const F: [QCode; 24] = [
            "f1", "f2", "f3", "f4", "f5", "f6", "f7", "f8", "f9", "f10", "f11", "f12", "f13",
            "f14", "f15", "f16", "f17", "f18", "f19", "f20", "f21", "f22", "f23", "f24",
        ];
        if (1..=24).contains(&n) {
            return Some(vec![F[n as usize - 1]]);
        }
    }
    if let Some(&(_, c)) = SHIFTED_NAMES.iter().find(|(n, _)| *n == lower) {
        let s = stroke_for(c)?;
        return Some(vec!["shift", s.key]);
    }
    // A single character names its own key; an upper-case letter means the letter key
    // (xdotool's "ctrl+T" is ctrl+t), so shift must be asked for explicitly.
    let mut chars = name.chars();
    if let (Some(c), None) = (chars.next(), chars.next()) {
        let s = stroke_for(c.to_ascii_lowercase())?;
        return Some(if s.shift && !c.is_ascii_alphabetic() {
            vec!["shift", s.key]
        } else {
            vec![s.key]
        });
    }
    None
}

/// Parses an xdotool-style combination ("ctrl+shift+t", "alt+Tab", "Return", "ctrl+plus")
/// into the qcodes to hold down together, in press order.
pub fn parse_combo(combo: &str) -> Result<Vec<QCode>, InputError> {
    let trimmed = combo.trim();
    if trimmed.is_empty() {
        return Err(InputError::EmptyCombo(combo.to_string()));
    }
    // "ctrl++" means ctrl and the '+' key.
    let parts: Vec<&str> = if let Some(head) = trimmed.strip_suffix("++") {
        head.split('+').chain(std::iter::once("+")).collect()
    } else {
        trimmed.split('+').collect()
    };
    let mut keys: Vec<QCode> = Vec::new();
    for part in parts {
        let part = part.trim();
        if part.is_empty() {
            return Err(InputError::EmptyCombo(combo.to_string()));
        }
        let codes = lookup_name(part).ok_or_else(|| InputError::UnknownKey {
            name: part.to_string(),
            suggestions: suggestions(part),
        })?;
        for c in codes {
            if !keys.contains(&c) {
                keys.push(c);
            }
        }
    }
    Ok(keys)
}

fn all_names() -> impl Iterator<Item = String> {
    NAMED_KEYS
        .iter()
        .map(|(n, _)| n.to_string())
        .chain(SHIFTED_NAMES.iter().map(|(n, _)| n.to_string()))
        .chain((1..=12).map(|n| format!("f{n}")))
}

/// Up to three known names closest to `name` (edit distance ≤ 2, or sharing a prefix).
fn suggestions(name: &str) -> Vec<String> {
    let lower = name.to_ascii_lowercase();
    let mut scored: Vec<(usize, String)> = all_names()
        .filter_map(|n| {
            let d = edit_distance(&lower, &n);
            let prefix = lower.len() >= 3 && (n.starts_with(&lower) || lower.starts_with(&n));
            (d <= 2 || prefix).then_some((if prefix { d.min(1) } else { d }, n))
        })
        .collect();
    scored.sort();
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().take(3).map(|(_, n)| n).collect()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combos_parse_case_insensitively_with_aliases() {
        assert_eq!(parse_combo("ctrl+s").unwrap(), vec!["ctrl", "s"]);
        assert_eq!(parse_combo("alt+Tab").unwrap(), vec!["alt", "tab"]);
        assert_eq!(parse_combo("Return").unwrap(), vec!["ret"]);
        assert_eq!(parse_combo("enter").unwrap(), vec!["ret"]);
        assert_eq!(parse_combo("ESC").unwrap(), vec!["esc"]);
        assert_eq!(parse_combo("cmd+space").unwrap(), vec!["meta_l", "spc"]);
        assert_eq!(parse_combo("F5").unwrap(), vec!["f5"]);
        assert_eq!(
            parse_combo("ctrl+shift+T").unwrap(),
            vec!["ctrl", "shift", "t"]
        );
        assert_eq!(
            parse_combo("ctrl+plus").unwrap(),
            vec!["ctrl", "shift", "equal"]
        );
        assert_eq!(
            parse_combo("ctrl++").unwrap(),
            vec!["ctrl", "shift", "equal"]
        );
        assert_eq!(parse_combo("super").unwrap(), vec!["meta_l"]);
        assert_eq!(parse_combo("Page_Up").unwrap(), vec!["pgup"]);
    }

    #[test]
    fn unknown_names_get_close_matches() {
        match parse_combo("ctrl+retrun").unwrap_err() {
            InputError::UnknownKey { name, suggestions } => {
                assert_eq!(name, "retrun");
                assert!(
                    suggestions.contains(&"return".to_string()),
                    "{suggestions:?}"
                );
            }
            e => panic!("{e:?}"),
        }
        assert!(matches!(
            parse_combo("ctrl+").unwrap_err(),
            InputError::EmptyCombo(_)
        ));
        assert!(matches!(
            parse_combo("F25").unwrap_err(),
            InputError::UnknownKey { .. }
        ));
    }
}
