//! Names from data as path components. Domains, teacher ids, run and stage names come from
//! datasets and configs (`openai/gsm8k`, or anything a row holds); a directory built from
//! one must stay inside its parent. [`safe_component`] escapes a name reversibly into one
//! plain file name; [`name_of_component`] is its inverse.
//!
//! * bytes of `[A-Za-z0-9._-]` stay as they are, every other byte becomes `%XX` (upper-case
//!   hex), so `/`, `\`, NUL and `%` itself never appear raw;
//! * a leading `.` becomes `%2E`, so `.`, `..` and hidden names cannot occur;
//! * the empty name becomes `%` (which no other name escapes to), so a component is never empty.
//!
//! Names stay unescaped everywhere but in paths: tables, `results.json` and reports show
//! them as written.

use crate::error::{DataError, Result};

/// Bytes kept as they are (except a leading `.`).
fn plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

/// The escaped component of the empty name.
const EMPTY: &str = "%";

/// `name` as one file name: never empty, never `.`/`..`, no separator; reversible.
pub fn safe_component(name: &str) -> String {
    if name.is_empty() {
        return EMPTY.to_string();
    }
    let mut out = String::with_capacity(name.len());
    for (i, &b) in name.as_bytes().iter().enumerate() {
        if plain(b) && !(i == 0 && b == b'.') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The name [`safe_component`] escaped into `component`; only its exact output is accepted.
pub fn name_of_component(component: &str) -> Result<String> {
    let bad = |why: &str| DataError::Format(format!("`{component}` is not an escaped name: {why}"));
    if component == EMPTY {
        return Ok(String::new());
    }
    if component.is_empty() {
        return Err(bad("empty"));
    }
    let bytes = component.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let b = hex_byte(bytes.get(i + 1..i + 3)).ok_or_else(|| bad("`%` without two upper-case hex digits"))?;
            if plain(b) && !(i == 0 && b == b'.') {
                return Err(bad("a plain byte is escaped"));
            }
            out.push(b);
            i += 3;
        } else if plain(bytes[i]) && !(i == 0 && bytes[i] == b'.') {
            out.push(bytes[i]);
            i += 1;
        } else {
            return Err(bad("an unescaped byte"));
        }
    }
    String::from_utf8(out).map_err(|_| bad("not UTF-8"))
}

/// Two upper-case hex digits as a byte.
fn hex_byte(digits: Option<&[u8]>) -> Option<u8> {
    let d = digits?;
    let v = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    Some(v(d[0])? << 4 | v(d[1])?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::{Component, Path};

    /// One normal component: no root, no `.`/`..`, no separator.
    fn assert_one_normal_component(c: &str) {
        assert!(!c.is_empty());
        assert!(!c.contains(['/', '\\', '\0']), "{c}");
        assert!(!c.starts_with('.'), "{c}");
        let comps: Vec<Component> = Path::new(c).components().collect();
        assert_eq!(comps.len(), 1, "{c}");
        assert!(matches!(comps[0], Component::Normal(_)), "{c}");
        assert!(!Path::new(c).is_absolute());
    }

    #[test]
    fn plain_names_are_unchanged() {
        for n in ["math.add", "code.expr", "shop_total", "grpo-x", "A9"] {
            assert_eq!(safe_component(n), n);
        }
    }

    #[test]
    fn dangerous_names_are_escaped() {
        assert_eq!(safe_component("openai/gsm8k"), "openai%2Fgsm8k");
        assert_eq!(safe_component(".."), "%2E.");
        assert_eq!(safe_component("."), "%2E");
        assert_eq!(safe_component(""), "%");
        assert_eq!(safe_component("../../victim"), "%2E.%2F..%2Fvictim");
        assert_eq!(safe_component("/etc"), "%2Fetc");
        assert_eq!(safe_component("a\\b"), "a%5Cb");
        assert_eq!(safe_component("100%"), "100%25");
        assert_eq!(safe_component("é"), "%C3%A9");
        for n in ["..", ".", "", "../../victim", "/etc", "C:\\x", ".hidden", "a\0b", "%", "%2E"] {
            let c = safe_component(n);
            assert_one_normal_component(&c);
            assert_eq!(name_of_component(&c).unwrap(), n);
        }
    }

    #[test]
    fn inverse_accepts_only_escaped_names() {
        for c in ["a/b", "..", ".x", "%2e", "%4", "%41", "a%", "%FF", "", "a b"] {
            assert!(name_of_component(c).is_err(), "{c:?}");
        }
    }

    proptest! {
        #[test]
        fn round_trip_and_one_component(name in any::<String>()) {
            let c = safe_component(&name);
            assert_one_normal_component(&c);
            prop_assert_eq!(name_of_component(&c).unwrap(), name);
        }

        #[test]
        fn ascii_round_trip(name in "[ -~]{0,12}") {
            let c = safe_component(&name);
            assert_one_normal_component(&c);
            prop_assert!(c != "." && c != "..");
            prop_assert_eq!(name_of_component(&c).unwrap(), name);
        }

        #[test]
        fn distinct_names_distinct_components(a in "[./a%-]{0,6}", b in "[./a%-]{0,6}") {
            prop_assume!(a != b);
            prop_assert_ne!(safe_component(&a), safe_component(&b));
        }
    }
}
