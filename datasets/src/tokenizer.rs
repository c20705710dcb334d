//! The text ↔ token boundary.
//!
//! [`ByteTokenizer`] is the built-in tokenizer of the tiny/small presets: ids 0..63 are special
//! tokens (the V4 ones get single ids: BOS = 0 and EOS = 1 as in V4, `<｜User｜>`, `<｜Assistant｜>`,
//! `<think>`, `</think>`, the DSML tool-call tags, tool results, task tokens), ids 64..319 are
//! the 256 bytes. [`HfTokenizer`] loads a Hugging Face `tokenizer.json` (e.g. the real V4 one) and
//! reads the same special ids from its added tokens.
//!
//! A checkpoint folder brings its own tokenizer ([`tokenizer_for_checkpoint`]):
//!
//! ```text
//! <checkpoint>/tokenizer.json          → HfTokenizer (BPE or any HF model)
//! <checkpoint>/tokenizer_config.json   (optional; carried along, not read)
//! no tokenizer.json, or preset:NAME    → ByteTokenizer
//! ```
//!
//! Rules checked on load: each V4 special the chat encoding needs (BOS, EOS, `<｜User｜>`,
//! `<｜Assistant｜>`, `<think>`, `</think>`) is one of the tokenizer's added tokens and encodes to
//! that single id; and every id fits the model: `max(vocab incl. added tokens, largest id + 1)
//! ≤ config.vocab_size` ([`check_vocab_fits`]), else the error names both numbers and files.
//! Every checkpoint written from such a folder carries [`TOKENIZER_FILES`] along
//! ([`carry_tokenizer_files`]).
//!
//! Identity: [`Tokenizer::fingerprint`] is the one definition of "the same tokenizer"
//! (`v4post-byte-320`, or `hf-<vocab>-<FNV-1a 64 of tokenizer.json>`). Teachers and students
//! ([`describe_tokenizer`]) and a resumed checkpoint against the current base
//! ([`check_resume_tokenizer`]) are compared by it, each tokenizer loaded by
//! [`tokenizer_for_checkpoint`] (a checkpoint given as a file names its folder).
//!
//! Length bound: [`Tokenizer::at_most_one_token_per_byte`] says whether `encode(t).len() ≤
//! t.len()` (bytes) for every text. The byte tokenizer: one id per byte, a special string of
//! k ≥ 1 bytes one id. A Hugging Face tokenizer when nothing adds text: no normalizer, no
//! padding, pre-tokenizers among ByteLevel (no prefix space), Split, Digits, Punctuation with a
//! ByteLevel (each byte one alphabet character), a BPE model without byte fallback (each token
//! covers ≥ 1 character) and non-empty added tokens; otherwise `false` (callers encode all).
//!
//! Encoding errors of a Hugging Face tokenizer (e.g. a truncation configuration that cannot
//! apply) cannot travel through the infallible [`Tokenizer::encode`]: [`HfTokenizer::try_encode`]
//! returns them, `encode` yields an empty list, warns once per process with the error and
//! counts the failure ([`encode_failures`]); decoding likewise ([`decode_failures`]).

use crate::error::{DataError, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

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
    /// One past the largest id the tokenizer can produce (≥ `vocab_size` when ids are sparse).
    fn id_bound(&self) -> usize {
        self.vocab_size()
    }
    fn special_ids(&self) -> SpecialIds;
    /// A short identity string (checked to be equal between a student and its teachers).
    fn fingerprint(&self) -> String;
    /// Whether `encode(t).len() ≤ t.len()` (bytes) for every text (module header); `false`
    /// when not known.
    fn at_most_one_token_per_byte(&self) -> bool {
        false
    }
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

    /// Each byte is one id, each special string (≥ 1 byte) one id.
    fn at_most_one_token_per_byte(&self) -> bool {
        true
    }
}

/// A Hugging Face `tokenizer.json` (the `tokenizers` 0.23 line).
pub struct HfTokenizer {
    inner: tokenizers::Tokenizer,
    specials: SpecialIds,
    fingerprint: String,
    id_bound: usize,
    byte_bounded: bool,
}

static ENCODE_FAILURES: AtomicU64 = AtomicU64::new(0);
static DECODE_FAILURES: AtomicU64 = AtomicU64::new(0);
static ENCODE_WARNED: AtomicBool = AtomicBool::new(false);
static DECODE_WARNED: AtomicBool = AtomicBool::new(false);

/// Texts a Hugging Face tokenizer failed to encode in this process (each gave no ids).
pub fn encode_failures() -> u64 {
    ENCODE_FAILURES.load(Ordering::Relaxed)
}

/// Id lists a Hugging Face tokenizer failed to decode in this process (each gave "").
pub fn decode_failures() -> u64 {
    DECODE_FAILURES.load(Ordering::Relaxed)
}

/// Count a failure; the first of its kind in the process is printed as a warning.
fn note_failure(count: &AtomicU64, warned: &AtomicBool, what: &str, err: &dyn std::fmt::Display) {
    count.fetch_add(1, Ordering::Relaxed);
    if !warned.swap(true, Ordering::Relaxed) {
        eprintln!(
            "warning: the tokenizer failed to {what} ({err}); it gives an empty result, and further \
             failures are counted without a warning"
        );
    }
}

/// Whether no stage of `inner` can produce more tokens than the text has bytes (module header).
fn hf_byte_bounded(inner: &tokenizers::Tokenizer) -> bool {
    use tokenizers::{ModelWrapper, PreTokenizerWrapper as P};
    fn parts(p: &P) -> Vec<&P> {
        match p {
            P::Sequence(s) => s.as_ref().iter().flat_map(parts).collect(),
            p => vec![p],
        }
    }
    let Some(pre) = inner.get_pre_tokenizer() else {
        return false;
    };
    let pres = parts(pre);
    let pre_ok = pres.iter().all(|p| match p {
        P::ByteLevel(b) => !b.add_prefix_space,
        P::Split(_) | P::Digits(_) | P::Punctuation(_) => true,
        _ => false,
    }) && pres.iter().any(|p| matches!(p, P::ByteLevel(_)));
    let model_ok = matches!(inner.get_model(), ModelWrapper::BPE(b) if !b.byte_fallback);
    let added_ok = inner.get_added_tokens_decoder().values().all(|t| !t.content.is_empty());
    inner.get_normalizer().is_none() && inner.get_padding().is_none() && pre_ok && model_ok && added_ok
}

/// The single id of special `s`: an added token of `inner` that encodes to exactly itself.
fn added_special_id(inner: &tokenizers::Tokenizer, s: &str, path: &Path) -> Result<u32> {
    let added = inner.get_added_tokens_decoder();
    let Some(id) = added.iter().find(|(_, t)| t.content == s).map(|(id, _)| *id) else {
        return Err(DataError::Tokenizer(format!(
            "{}: the V4 special token `{s}` is missing: it must be one of the tokenizer's added tokens",
            path.display()
        )));
    };
    let ids = inner
        .encode(s, false)
        .map_err(|e| DataError::Tokenizer(format!("{}: encoding `{s}`: {e}", path.display())))?
        .get_ids()
        .to_vec();
    if ids != [id] {
        return Err(DataError::Tokenizer(format!(
            "{}: the V4 special token `{s}` (added token {id}) encodes to {ids:?}, not to its single id",
            path.display()
        )));
    }
    Ok(id)
}

impl HfTokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| DataError::Tokenizer(format!("{}: {e}", path.display())))?;
        // the specials the chat encoding cannot do without (the tool-call end falls back to EOS)
        let id = |s: &str| added_special_id(&inner, s, path);
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
        let id_bound = inner.get_vocab(true).values().map(|&i| i as usize + 1).max().unwrap_or(0);
        Ok(HfTokenizer {
            fingerprint: format!("hf-{}-{hash:016x}", inner.get_vocab_size(true)),
            byte_bounded: hf_byte_bounded(&inner),
            inner,
            specials,
            id_bound,
        })
    }

    /// [`Tokenizer::encode`] with the tokenizer's error.
    pub fn try_encode(&self, text: &str) -> Result<Vec<u32>> {
        self.inner
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| DataError::Tokenizer(format!("encoding {} bytes of text: {e}", text.len())))
    }
}

impl Tokenizer for HfTokenizer {
    fn encode(&self, text: &str) -> Vec<u32> {
        self.try_encode(text).unwrap_or_else(|e| {
            note_failure(&ENCODE_FAILURES, &ENCODE_WARNED, "encode", &e);
            Vec::new()
        })
    }
    fn decode(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, false).unwrap_or_else(|e| {
            note_failure(&DECODE_FAILURES, &DECODE_WARNED, &format!("decode {} ids", ids.len()), &e);
            String::new()
        })
    }
    fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
    fn id_bound(&self) -> usize {
        self.id_bound.max(self.vocab_size())
    }
    fn special_ids(&self) -> SpecialIds {
        self.specials
    }
    fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }
    fn at_most_one_token_per_byte(&self) -> bool {
        self.byte_bounded
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

/// The tokenizer files a checkpoint folder may hold; outputs carry the ones present.
pub const TOKENIZER_FILES: [&str; 2] = ["tokenizer.json", "tokenizer_config.json"];

/// The folder of a checkpoint given as its folder or as a file inside it.
pub fn checkpoint_folder(path: &Path) -> PathBuf {
    if path.is_file() {
        path.parent().map(Path::to_path_buf).unwrap_or_default()
    } else {
        path.to_path_buf()
    }
}

/// The `tokenizer.json` of a checkpoint folder, if it has one.
pub fn tokenizer_file(checkpoint: &Path) -> Option<PathBuf> {
    let p = checkpoint_folder(checkpoint).join(TOKENIZER_FILES[0]);
    p.exists().then_some(p)
}

/// The tokenizer of a checkpoint: its `tokenizer.json`, or the byte tokenizer without one.
pub fn tokenizer_for_checkpoint(checkpoint: &Path) -> Result<Box<dyn Tokenizer>> {
    match tokenizer_file(checkpoint) {
        Some(p) => Ok(Box::new(HfTokenizer::from_file(&p)?)),
        None => Ok(Box::new(ByteTokenizer)),
    }
}

/// `tok` (loaded from `checkpoint`, None: a preset) in words: its file and fingerprint, or the
/// built-in byte tokenizer.
pub fn describe_tokenizer(tok: &dyn Tokenizer, checkpoint: Option<&Path>) -> String {
    match checkpoint.and_then(tokenizer_file) {
        Some(p) => format!("{} (fingerprint {})", p.display(), tok.fingerprint()),
        None => match checkpoint {
            Some(c) => format!(
                "the built-in byte tokenizer ({}; no tokenizer.json in {})",
                tok.fingerprint(),
                checkpoint_folder(c).display()
            ),
            None => format!("the built-in byte tokenizer ({}, a preset)", tok.fingerprint()),
        },
    }
}

/// A resumed checkpoint (or run directory) `resumed` must have the tokenizer the run uses now,
/// `current` of `current_from` (None: a preset): else an error naming both.
pub fn check_resume_tokenizer(resumed: &Path, current: &dyn Tokenizer, current_from: Option<&Path>) -> Result<()> {
    let had = tokenizer_for_checkpoint(resumed)?;
    if had.fingerprint() == current.fingerprint() {
        return Ok(());
    }
    Err(DataError::Tokenizer(format!(
        "--resume: {} was started with tokenizer {}, but the base now has {}; resume with the base \
         it was started from (or start afresh without --resume)",
        resumed.display(),
        describe_tokenizer(had.as_ref(), Some(resumed)),
        describe_tokenizer(current, current_from),
    )))
}

/// Every id of `tok` must index the model's embedding: `max(vocab, id bound) ≤ vocab_size`.
/// `checkpoint` (None for a preset) names the files in the error.
pub fn check_vocab_fits(tok: &dyn Tokenizer, vocab_size: usize, checkpoint: Option<&Path>) -> Result<()> {
    if tok.vocab_size().max(tok.id_bound()) <= vocab_size {
        return Ok(());
    }
    let folder = checkpoint.map(checkpoint_folder);
    let source = match folder.as_deref().and_then(tokenizer_file) {
        Some(p) => p.display().to_string(),
        None => "the built-in byte tokenizer".to_string(),
    };
    let config = match &folder {
        Some(f) => f.join("config.json").display().to_string(),
        None => "the preset's config".to_string(),
    };
    vocab_fits(tok, vocab_size, &source, &config)
}

/// [`check_vocab_fits`] for a tokenizer given as a file (`model init --tokenizer`) against the
/// `vocab_size` of the model config described by `config` (a path or a preset).
pub fn check_tokenizer_file_fits(tok: &dyn Tokenizer, vocab_size: usize, tokenizer: &Path, config: &str) -> Result<()> {
    vocab_fits(tok, vocab_size, &tokenizer.display().to_string(), config)
}

/// `max(vocab, id bound) ≤ vocab_size`, else an error naming `source` and `config`.
fn vocab_fits(tok: &dyn Tokenizer, vocab_size: usize, source: &str, config: &str) -> Result<()> {
    let n = tok.vocab_size().max(tok.id_bound());
    if n <= vocab_size {
        return Ok(());
    }
    Err(DataError::Tokenizer(format!(
        "{source} has {n} tokens (vocabulary incl. added tokens), more than vocab_size {vocab_size} of the model \
         ({config}): every token id must be below vocab_size"
    )))
}

/// [`tokenizer_for_checkpoint`] checked with [`check_vocab_fits`] against the model's `vocab_size`.
pub fn checkpoint_tokenizer(checkpoint: &Path, vocab_size: usize) -> Result<Box<dyn Tokenizer>> {
    let tok = tokenizer_for_checkpoint(checkpoint)?;
    check_vocab_fits(tok.as_ref(), vocab_size, Some(checkpoint))?;
    Ok(tok)
}

/// Whether `a` and `b` name one existing file (copying a file onto itself would empty it).
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// Give the checkpoint folder `to` the tokenizer files of checkpoint `from` (None: the byte
/// tokenizer, so no files): each of [`TOKENIZER_FILES`] present in `from` is copied, and one
/// absent there is removed from `to` so an output never keeps a stale tokenizer. Returns how
/// many files were copied.
pub fn carry_tokenizer_files(from: Option<&Path>, to: &Path) -> Result<usize> {
    let src = from.map(checkpoint_folder);
    let mut copied = 0;
    for name in TOKENIZER_FILES {
        let from = src.as_ref().map(|s| s.join(name)).filter(|p| p.exists());
        copied += usize::from(copy_or_remove(from.as_deref(), to, name)?);
    }
    Ok(copied)
}

/// `to/name` becomes a copy of `src` (nothing to do when it is that file already), or is removed
/// when there is no `src`, so an output never keeps a stale tokenizer file. True when `to/name`
/// holds `src` afterwards.
fn copy_or_remove(src: Option<&Path>, to: &Path, name: &str) -> Result<bool> {
    let dst = to.join(name);
    match src {
        Some(p) if same_file(p, &dst) => Ok(true),
        Some(p) => {
            std::fs::create_dir_all(to).map_err(|e| DataError::io(to, e))?;
            std::fs::copy(p, &dst).map_err(|e| DataError::io(&dst, e))?;
            Ok(true)
        }
        None if dst.exists() => std::fs::remove_file(&dst).map(|_| false).map_err(|e| DataError::io(&dst, e)),
        None => Ok(false),
    }
}

/// [`carry_tokenizer_files`] for a tokenizer given as a file: `tokenizer` is copied to
/// `to/tokenizer.json` (whatever its own name), and the `tokenizer_config.json` next to it
/// when present (a stale one in `to` is removed otherwise). Returns how many files were copied.
pub fn carry_tokenizer_file(tokenizer: &Path, to: &Path) -> Result<usize> {
    let config = tokenizer.parent().map(|d| d.join(TOKENIZER_FILES[1])).filter(|p| p.exists());
    let copied = usize::from(copy_or_remove(Some(tokenizer), to, TOKENIZER_FILES[0])?)
        + usize::from(copy_or_remove(config.as_deref(), to, TOKENIZER_FILES[1])?);
    Ok(copied)
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

    /// The committed BPE test tokenizer (scripts/make_test_tokenizer.py).
    fn bpe_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/tokenizers/bpe-400")
    }

    fn bpe_json() -> serde_json::Value {
        let text = std::fs::read_to_string(bpe_dir().join("tokenizer.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// `tokenizer.json` text `v` in a fresh folder.
    fn folder_with(v: &serde_json::Value) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("tokenizer.json"), serde_json::to_string(v).unwrap()).unwrap();
        d
    }

    #[test]
    fn bpe_tokenizer_has_the_v4_specials_and_round_trips() {
        let t = HfTokenizer::from_file(&bpe_dir().join("tokenizer.json")).unwrap();
        let json = bpe_json();
        let model_vocab = json["model"]["vocab"].as_object().unwrap().len();
        assert_eq!(t.vocab_size(), model_vocab, "the specials are in the trained vocabulary");
        assert!(t.vocab_size() <= 512, "fits golden A's vocab_size");
        let s = t.special_ids();
        for (name, id) in [(BOS, s.bos), (EOS, s.eos), (USER, s.user), (ASSISTANT, s.assistant)] {
            assert_eq!(t.encode(name), vec![id], "{name}");
        }
        assert_eq!(t.encode(THINK_END), vec![s.think_end]);
        assert_eq!(t.encode(TOOL_CALLS_END), vec![s.tool_calls_end]);
        let text = format!(
            "{BOS}{USER}What is 17 + 25? Answer in \\boxed{{}}.{ASSISTANT}{THINK_START}17+25=42{THINK_END}\
             \\boxed{{42}} — naïve café ✓ 漢字{EOS}"
        );
        let ids = t.encode(&text);
        assert_eq!(t.decode(&ids), text);
        assert!(ids.len() < ByteTokenizer.encode(&text).len(), "BPE merges bytes: {} ids", ids.len());
        assert!(ids.iter().all(|&i| (i as usize) < t.id_bound()));
        // every byte is in the alphabet: arbitrary text survives
        let odd = "\u{0}\t\r\n\u{7f}\u{10ffff}<｜User｜ <think";
        assert_eq!(t.decode(&t.encode(odd)), odd);
    }

    #[test]
    fn a_checkpoint_folder_brings_its_tokenizer() {
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(tokenizer_for_checkpoint(empty.path()).unwrap().fingerprint(), ByteTokenizer.fingerprint());
        assert!(tokenizer_file(empty.path()).is_none());
        let t = tokenizer_for_checkpoint(&bpe_dir()).unwrap();
        assert!(t.fingerprint().starts_with("hf-"), "{}", t.fingerprint());
        // a file inside the folder names the folder
        let f = bpe_dir().join("tokenizer_config.json");
        assert_eq!(tokenizer_for_checkpoint(&f).unwrap().fingerprint(), t.fingerprint());
        // a broken file is an error naming it, never a silent fallback to bytes
        let bad = tempfile::tempdir().unwrap();
        std::fs::write(bad.path().join("tokenizer.json"), "{not json").unwrap();
        let e = tokenizer_for_checkpoint(bad.path()).err().unwrap().to_string();
        assert!(e.contains("tokenizer.json"), "{e}");
    }

    #[test]
    fn the_vocabulary_must_fit_vocab_size() {
        let t = tokenizer_for_checkpoint(&bpe_dir()).unwrap();
        let n = t.vocab_size();
        check_vocab_fits(t.as_ref(), n, Some(&bpe_dir())).unwrap();
        let e = check_vocab_fits(t.as_ref(), n - 1, Some(&bpe_dir())).unwrap_err().to_string();
        for part in [n.to_string(), (n - 1).to_string(), "tokenizer.json".into(), "config.json".into()] {
            assert!(e.contains(&part), "{part} in {e}");
        }
        let e = check_vocab_fits(&ByteTokenizer, 300, None).unwrap_err().to_string();
        assert!(e.contains("byte tokenizer") && e.contains("320") && e.contains("300"), "{e}");
        // added tokens count: 200 more than the model vocabulary
        let mut json = bpe_json();
        let extra: Vec<serde_json::Value> = (0..200)
            .map(|i| {
                serde_json::json!({"id": n + i, "content": format!("<extra_{i}>"), "single_word": false,
                "lstrip": false, "rstrip": false, "normalized": false, "special": true})
            })
            .collect();
        json["added_tokens"].as_array_mut().unwrap().extend(extra);
        let big = folder_with(&json);
        let e = checkpoint_tokenizer(big.path(), 512).err().unwrap().to_string();
        assert!(e.contains(&format!("{}", n + 200)) && e.contains("512"), "{e}");
    }

    #[test]
    fn a_missing_special_is_named() {
        for missing in [THINK_START, EOS] {
            let mut json = bpe_json();
            json["added_tokens"].as_array_mut().unwrap().retain(|t| t["content"] != missing);
            let d = folder_with(&json);
            let e = tokenizer_for_checkpoint(d.path()).err().unwrap().to_string();
            assert!(e.contains(missing) && e.contains("added tokens"), "{e}");
        }
    }

    #[test]
    fn an_encode_error_is_returned_counted_and_never_panics() {
        // truncation to 1 token with strategy OnlySecond fails on any single text longer than
        // one token ("second sequence not provided"); the one-id specials still load
        let mut json = bpe_json();
        json["truncation"] =
            serde_json::json!({"direction": "Right", "max_length": 1, "strategy": "OnlySecond", "stride": 0});
        let d = folder_with(&json);
        let t = HfTokenizer::from_file(&d.path().join("tokenizer.json")).unwrap();
        let e = t.try_encode("What is 17 + 25?").unwrap_err().to_string();
        assert!(e.contains("encoding 16 bytes") && e.to_lowercase().contains("second sequence"), "{e}");
        let before = encode_failures();
        assert!(t.encode("What is 17 + 25?").is_empty());
        assert!(encode_failures() > before, "the failure is counted");
        // a working tokenizer counts nothing and returns the ids
        let ok = HfTokenizer::from_file(&bpe_dir().join("tokenizer.json")).unwrap();
        assert_eq!(ok.try_encode("What is 17 + 25?").unwrap(), ok.encode("What is 17 + 25?"));
    }

    #[test]
    fn token_counts_are_bounded_by_bytes_where_claimed() {
        let bpe = HfTokenizer::from_file(&bpe_dir().join("tokenizer.json")).unwrap();
        assert!(ByteTokenizer.at_most_one_token_per_byte() && bpe.at_most_one_token_per_byte());
        let texts = [
            format!("{BOS}{USER}What is 17 + 25?{ASSISTANT}{THINK_START}x{THINK_END}{EOS}"),
            "\u{0}\t\r\n\u{7f}\u{10ffff} naïve ✓ 漢字 <｜User｜ <think".to_string(),
            " ".repeat(50),
        ];
        for t in &texts {
            assert!(ByteTokenizer.encode(t).len() <= t.len());
            assert!(bpe.encode(t).len() <= t.len(), "{t:?}");
        }
        // a normalizer that adds text voids the bound: "a" (1 byte) gets 9 more bytes first
        let mut json = bpe_json();
        json["normalizer"] = serde_json::json!({"type": "Prepend", "prepend": "▁▁▁"});
        let d = folder_with(&json);
        let pre = HfTokenizer::from_file(&d.path().join("tokenizer.json")).unwrap();
        assert!(!pre.at_most_one_token_per_byte());
        assert!(pre.encode("a").len() > 1, "{:?}", pre.encode("a"));
    }

    #[test]
    fn a_resumed_checkpoint_must_have_the_current_tokenizer() {
        let bpe = tokenizer_for_checkpoint(&bpe_dir()).unwrap();
        check_resume_tokenizer(&bpe_dir(), bpe.as_ref(), Some(&bpe_dir())).unwrap();
        // a file inside the checkpoint names its folder
        check_resume_tokenizer(&bpe_dir().join("tokenizer.json"), bpe.as_ref(), Some(&bpe_dir())).unwrap();
        let plain = tempfile::tempdir().unwrap();
        let e = check_resume_tokenizer(&bpe_dir(), &ByteTokenizer, Some(plain.path())).unwrap_err().to_string();
        for part in [bpe.fingerprint(), ByteTokenizer.fingerprint(), "tokenizer.json".into(), "--resume".into()] {
            assert!(e.contains(&part), "{part} in {e}");
        }
        let e = check_resume_tokenizer(plain.path(), bpe.as_ref(), Some(&bpe_dir())).unwrap_err().to_string();
        assert!(e.contains("built-in byte tokenizer") && e.contains(&bpe.fingerprint()), "{e}");
    }

    #[test]
    fn outputs_carry_the_tokenizer_files() {
        let out = tempfile::tempdir().unwrap();
        assert_eq!(carry_tokenizer_files(Some(&bpe_dir()), out.path()).unwrap(), 2);
        for f in TOKENIZER_FILES {
            assert_eq!(std::fs::read(out.path().join(f)).unwrap(), std::fs::read(bpe_dir().join(f)).unwrap());
        }
        // onto itself: nothing is emptied
        assert_eq!(carry_tokenizer_files(Some(out.path()), out.path()).unwrap(), 2);
        assert_eq!(
            std::fs::read(out.path().join("tokenizer.json")).unwrap(),
            std::fs::read(bpe_dir().join("tokenizer.json")).unwrap()
        );
        // from a byte-tokenizer source (or a preset) stale files go
        let plain = tempfile::tempdir().unwrap();
        assert_eq!(carry_tokenizer_files(Some(plain.path()), out.path()).unwrap(), 0);
        assert!(TOKENIZER_FILES.iter().all(|f| !out.path().join(f).exists()));
        carry_tokenizer_files(Some(&bpe_dir()), out.path()).unwrap();
        carry_tokenizer_files(None, out.path()).unwrap();
        assert!(tokenizer_file(out.path()).is_none());
    }
}
