//! The text ↔ token boundary.
//!
//! [`ByteTokenizer`] is the built-in tokenizer of the tiny/small presets: ids 0..63 are special
//! tokens (the V4 ones get single ids: BOS = 0 and EOS = 1 as in V4, `<｜User｜>`, `<｜Assistant｜>`,
//! `<think>`, `</think>`, the DSML tool-call tags, tool results, task tokens), ids 64..319 are
//! the 256 bytes. [`HfTokenizer`] loads a Hugging Face `tokenizer.json` (e.g. the real V4 one) and
//! reads the same special ids from it.

use crate::error::{DataError, Result};
use std::path::Path;

/// Every special string the V4 chat encoding uses, in id order for the byte tokenizer.
pub const SPECIALS: &[&str] = &[
    "<｜begin▁of▁sentence｜>",
    "<｜end▁of▁sentence｜>",
    "<｜User｜>",
    "<｜Assistant｜>",
    "<think>",
    "</think>",
    "<｜latest_reminder｜>",
    "<｜DSML｜tool_calls>",
    "</｜DSML｜tool_calls>",
    "<｜DSML｜invoke",
    "</｜DSML｜invoke>",
    "<｜DSML｜parameter",
    "</｜DSML｜parameter>",
    "<tool_result>",
    "</tool_result>",
    "<｜action｜>",
    "<｜query｜>",
    "<｜authority｜>",
    "<｜domain｜>",
    "<｜title｜>",
    "<｜read_url｜>",
];

pub const BOS: &str = SPECIALS[0];
pub const EOS: &str = SPECIALS[1];
pub const USER: &str = SPECIALS[2];
pub const ASSISTANT: &str = SPECIALS[3];
pub const THINK_START: &str = SPECIALS[4];
pub const THINK_END: &str = SPECIALS[5];
pub const LATEST_REMINDER: &str = SPECIALS[6];
pub const TOOL_CALLS_START: &str = SPECIALS[7];
pub const TOOL_CALLS_END: &str = SPECIALS[8];
pub const INVOKE_START: &str = SPECIALS[9];
pub const INVOKE_END: &str = SPECIALS[10];
pub const PARAM_START: &str = SPECIALS[11];
pub const PARAM_END: &str = SPECIALS[12];
pub const TOOL_RESULT_START: &str = SPECIALS[13];
pub const TOOL_RESULT_END: &str = SPECIALS[14];

/// Special token ids a sampler and the trainers need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SpecialIds {
    pub bos: u32,
    pub eos: u32,
    pub user: u32,
    pub assistant: u32,
    pub think_start: u32,
    pub think_end: u32,
    pub tool_calls_end: u32,
}

/// Converts between text and token ids.
pub trait Tokenizer: Send + Sync {
    /// Tokenise text; special strings become their single ids.
    fn encode(&self, text: &str) -> Vec<u32>;
    /// Detokenise; invalid UTF-8 (a sampled partial character) is replaced, never an error.
    fn decode(&self, ids: &[u32]) -> String;
    fn vocab_size(&self) -> usize;
    fn special_ids(&self) -> SpecialIds;
    /// A short identity string (checked to be equal between a student and its teachers).
    fn fingerprint(&self) -> String;
}

/// Built-in byte-level tokenizer (vocab 320).
#[derive(Debug, Clone, Default)]
pub struct ByteTokenizer;

impl ByteTokenizer {
    pub const BYTE_OFFSET: u32 = 64;
    pub const VOCAB: usize = 320;

    fn special_id(s: &str) -> u32 {
        SPECIALS.iter().position(|x| *x == s).map(|i| i as u32).unwrap_or(0)
    }
}

impl Tokenizer for ByteTokenizer {
    fn encode(&self, text: &str) -> Vec<u32> {
        let bytes = text.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        'outer: while i < bytes.len() {
            // All specials start with '<'; the longest match wins.
            if bytes[i] == b'<' {
                let mut best: Option<(usize, usize)> = None;
                for (id, s) in SPECIALS.iter().enumerate() {
                    let sb = s.as_bytes();
                    if bytes[i..].starts_with(sb) && best.is_none_or(|(_, l)| sb.len() > l) {
                        best = Some((id, sb.len()));
                    }
                }
                if let Some((id, len)) = best {
                    out.push(id as u32);
                    i += len;
                    continue 'outer;
                }
            }
            out.push(Self::BYTE_OFFSET + bytes[i] as u32);
            i += 1;
        }
        out
    }

    fn decode(&self, ids: &[u32]) -> String {
        let mut buf: Vec<u8> = Vec::with_capacity(ids.len());
        for &id in ids {
            if id >= Self::BYTE_OFFSET {
                if let Ok(b) = u8::try_from(id - Self::BYTE_OFFSET) {
                    buf.push(b);
                }
            } else if let Some(s) = SPECIALS.get(id as usize) {
                buf.extend_from_slice(s.as_bytes());
            }
        }
        String::from_utf8_lossy(&buf).into_owned()
    }

    fn vocab_size(&self) -> usize {
        Self::VOCAB
    }

    fn special_ids(&self) -> SpecialIds {
        SpecialIds {
            bos: Self::special_id(BOS),
            eos: Self::special_id(EOS),
            user: Self::special_id(USER),
            assistant: Self::special_id(ASSISTANT),
            think_start: Self::special_id(THINK_START),
            think_end: Self::special_id(THINK_END),
            tool_calls_end: Self::special_id(TOOL_CALLS_END),
        }
    }

    fn fingerprint(&self) -> String {
        format!("v4post-byte-{}", Self::VOCAB)
    }
}

/// A Hugging Face `tokenizer.json` (the `tokenizers` 0.23 line).
pub struct HfTokenizer {
    inner: tokenizers::Tokenizer,
    specials: SpecialIds,
    fingerprint: String,
}

impl HfTokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| DataError::Tokenizer(format!("{}: {e}", path.display())))?;
        let id = |s: &str| -> Result<u32> {
            inner.token_to_id(s).ok_or_else(|| {
                DataError::Tokenizer(format!("{}: special token `{s}` is not in the vocabulary", path.display()))
            })
        };
        let specials = SpecialIds {
            bos: id(BOS)?,
            eos: id(EOS)?,
            user: id(USER)?,
            assistant: id(ASSISTANT)?,
            think_start: id(THINK_START)?,
            think_end: id(THINK_END)?,
            tool_calls_end: id(TOOL_CALLS_END).or_else(|_| id(EOS))?,
        };
        let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
        // FNV-1a of the file: equal files give equal fingerprints.
        let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
        Ok(HfTokenizer { fingerprint: format!("hf-{}-{hash:016x}", inner.get_vocab_size(true)), inner, specials })
    }
}

impl Tokenizer for HfTokenizer {
    fn encode(&self, text: &str) -> Vec<u32> {
        self.inner.encode(text, false).map(|e| e.get_ids().to_vec()).unwrap_or_default()
    }
    fn decode(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, false).unwrap_or_default()
    }
    fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
    fn special_ids(&self) -> SpecialIds {
        self.specials
    }
    fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }
}

/// `"byte"` (built in) or a path to a `tokenizer.json`.
pub fn load_tokenizer(spec: &str) -> Result<Box<dyn Tokenizer>> {
    if spec == "byte" || spec.is_empty() {
        Ok(Box::new(ByteTokenizer))
    } else {
        Ok(Box::new(HfTokenizer::from_file(Path::new(spec))?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specials_get_single_ids_and_round_trip() {
        let t = ByteTokenizer;
        let text = format!("{BOS}hi{USER}2+2?{ASSISTANT}{THINK_START}four{THINK_END}4{EOS}");
        let ids = t.encode(&text);
        assert_eq!(ids[0], 0);
        assert_eq!(*ids.last().unwrap(), 1);
        assert_eq!(ids.iter().filter(|&&i| i < 64).count(), 6);
        assert_eq!(t.decode(&ids), text);
        let s = t.special_ids();
        assert_eq!((s.bos, s.eos), (0, 1));
    }

    #[test]
    fn longest_special_wins_and_unicode_survives() {
        let t = ByteTokenizer;
        // `</｜DSML｜invoke>` must not be split into `<` + bytes
        let ids = t.encode("</｜DSML｜invoke><｜DSML｜invoke name=\"x\">é");
        assert_eq!(ids[0], 10);
        assert_eq!(ids[1], 9);
        assert_eq!(t.decode(&ids), "</｜DSML｜invoke><｜DSML｜invoke name=\"x\">é");
        // half a UTF-8 character decodes lossily instead of failing
        let e = t.encode("é");
        assert_eq!(t.decode(&e[..1]), "\u{FFFD}");
        assert!(t.encode("").is_empty());
        // ids outside the vocabulary are ignored on decode
        assert_eq!(t.decode(&[40, 9999]), "");
    }
}
