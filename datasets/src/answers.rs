//! Final answers inside solution and response texts, shared by dataset loading
//! ([`crate::layouts`]: a gold taken from a solution) and the math verifier (`rewards::math`:
//! the answer taken from a response), so both read a text the same way.
//!
//! [`last_boxed`]: the contents of the LAST `\boxed{…}` in the text, braces balanced
//! (`\boxed{\frac{1}{2}}` → `\frac{1}{2}`, `\boxed{{a}{b}}` → `{a}{b}`); with no `\boxed` at
//! all, the last `\fbox{…}` (the Hendrycks MATH convention); the brace-less form `\boxed 5$`
//! → `5` (up to the next `$`, or the end of the text, trimmed). An unclosed box, an empty
//! brace-less box, or a text without one gives `None`; `\boxed{}` gives `Some("")`.

/// Contents of the last `\boxed{...}` (or `\fbox{...}`) with balanced braces; `\boxed 5$` → `5`.
pub fn last_boxed(text: &str) -> Option<String> {
    let (pos, tag) = match text.rfind("\\boxed") {
        Some(p) => (p, "\\boxed"),
        None => (text.rfind("\\fbox")?, "\\fbox"),
    };
    let rest = &text[pos + tag.len()..];
    if let Some(r) = rest.strip_prefix(' ') {
        let end = r.find('$').unwrap_or(r.len());
        let v = r[..end].trim();
        return (!v.is_empty()).then(|| v.to_string());
    }
    let body = rest.strip_prefix('{')?;
    let mut depth = 1usize;
    for (i, c) in body.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(body[..i].to_string());
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxed_vectors_from_the_notes() {
        assert_eq!(last_boxed("so \\boxed{\\frac{1}{2}}.").as_deref(), Some("\\frac{1}{2}"));
        assert_eq!(last_boxed("\\boxed{\\sqrt{x^{2}}}").as_deref(), Some("\\sqrt{x^{2}}"));
        assert_eq!(last_boxed("\\boxed{1} then \\boxed{2}").as_deref(), Some("2"));
        assert_eq!(last_boxed("\\boxed{12"), None);
        assert_eq!(last_boxed("\\boxed 5$").as_deref(), Some("5"));
        assert_eq!(last_boxed("\\fbox{7}").as_deref(), Some("7"));
        assert_eq!(last_boxed("no box"), None);
        assert_eq!(last_boxed("\\boxed{{a}{b}}").as_deref(), Some("{a}{b}"));
    }

    #[test]
    fn fbox_and_braceless_forms_found_in_solutions() {
        // the two forms the old datasets-side copy missed
        assert_eq!(last_boxed("Hence the answer is $\\fbox{42}$.").as_deref(), Some("42"));
        assert_eq!(last_boxed("so the answer is $\\boxed 5$.").as_deref(), Some("5"));
        assert_eq!(last_boxed("\\boxed{}").as_deref(), Some(""));
        assert_eq!(last_boxed("\\boxed $"), None);
    }
}
