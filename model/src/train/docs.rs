//! Document layout of a packed training batch: where each packed document starts, the
//! RoPE position of every row, and how compressed entries are formed and numbered per
//! document.
//!
//! A row `b` of the padded batch `[B, S]` holds documents `k = 0..K_b` at
//! `[a_k, a_{k+1})` (`a_0 = 0`; the right padding belongs to the last one, which is harmless:
//! padding comes after every real token of that document). Every document is computed as
//! if it ran alone:
//! * RoPE position of row `(b, t)` in document `k` is `t − a_k`;
//! * the sliding window of query `t` is `max(a_k, t − W + 1) ..= t`;
//! * compression blocks of ratio `m` are counted from `a_k`: document `k` of length `L_k`
//!   has `n_k = ⌊L_k / m⌋` entries, entry `i` pools tokens `a_k + i·m .. a_k + (i+1)·m` (and,
//!   for CSA, the previous block of the *same* document, none for `i = 0`), at RoPE
//!   position `i·m`;
//! * query `t` sees entries `0 .. min(⌊(t − a_k + 1) / m⌋, n_k)` of its own document.
//!
//! Entries of one row are numbered document after document: document `k`'s entry `i` is row
//! entry `o_k + i` with `o_k = Σ_{j<k} n_j`; rows with fewer entries than the longest row are
//! zero-padded (padding entries are never selected). With one document per row this is
//! exactly the unpacked layout: `n = ⌊S / m⌋` entries at positions `i·m`.

use crate::error::{ModelError, Result};

/// Documents of every row of a padded batch `[B, S]`.
#[derive(Debug, Clone, PartialEq)]
pub struct DocLayout {
    pub batch: usize,
    pub seq: usize,
    /// Per row, the documents as `[start, end)`; they tile `[0, S)`.
    pub docs: Vec<Vec<(usize, usize)>>,
    /// Start of the document of row `(b, t)`, at `b·S + t`.
    pub start: Vec<usize>,
}

/// Check that `starts` are document start offsets of a sequence of `len` tokens: empty (one
/// document), or `0 = a_0 < a_1 < … < a_{K−1} < len`.
pub fn validate_starts(starts: &[usize], len: usize) -> Result<()> {
    if starts.is_empty() {
        return Ok(());
    }
    if starts[0] != 0 {
        return Err(ModelError::Input(format!("document starts must begin at 0, got {starts:?}")));
    }
    if let Some(w) = starts.windows(2).find(|w| w[1] <= w[0]) {
        return Err(ModelError::Input(format!("document starts must increase strictly ({} then {})", w[0], w[1])));
    }
    match starts.last() {
        Some(&last) if last >= len => {
            Err(ModelError::Input(format!("document start {last} is not inside the sequence of {len} tokens")))
        }
        _ => Ok(()),
    }
}

/// `[start, end)` of each document of a row padded to `s` (the padding joins the last one).
fn row_docs(starts: &[usize], s: usize) -> Vec<(usize, usize)> {
    if starts.is_empty() {
        return vec![(0, s)];
    }
    let ends = starts.iter().skip(1).copied().chain(std::iter::once(s));
    starts.iter().copied().zip(ends).collect()
}

impl DocLayout {
    /// Layout of `B = starts.len()` rows padded to `s`; `starts[b]` as for [`validate_starts`].
    pub fn new(starts: &[&[usize]], s: usize) -> Self {
        let docs: Vec<Vec<(usize, usize)>> = starts.iter().map(|st| row_docs(st, s)).collect();
        let mut start = Vec::with_capacity(docs.len() * s);
        for row in &docs {
            for &(a, e) in row {
                start.extend(std::iter::repeat_n(a, e - a));
            }
        }
        DocLayout { batch: docs.len(), seq: s, docs, start }
    }

    /// Whether every row is a single document (the unpacked batch).
    pub fn is_unpacked(&self) -> bool {
        self.docs.iter().all(|d| d.len() == 1)
    }

    /// RoPE position of every row `(b, t)`: `t − a_k`.
    pub fn positions(&self) -> Vec<usize> {
        self.start.iter().enumerate().map(|(r, &a)| r % self.seq - a).collect()
    }

    /// Per row `(b, t)`, the first raw key its query may see (its document's start).
    pub fn key_starts(&self) -> Vec<u32> {
        self.start.iter().map(|&a| a as u32).collect()
    }

    /// Compressed-entry layout of ratio `m ≥ 1`.
    pub fn entries(&self, m: usize) -> EntryLayout {
        let (b, s) = (self.batch, self.seq);
        let mut first_row = Vec::new();
        let mut prev = Vec::new();
        let mut pos = Vec::new();
        let mut row_of = Vec::new();
        let mut offset = vec![0usize; b * s];
        let mut per_row_count = vec![0usize; b];
        for (bi, row) in self.docs.iter().enumerate() {
            let mut o = 0;
            for &(a, e) in row {
                let n = (e - a) / m;
                for i in 0..n {
                    prev.push(if i == 0 { None } else { Some(first_row.len() - 1) });
                    first_row.push(bi * s + a + i * m);
                    pos.push(i * m);
                    row_of.push((bi, o + i));
                }
                offset[bi * s + a..bi * s + e].fill(o);
                o += n;
            }
            per_row_count[bi] = o;
        }
        let per_row = per_row_count.iter().copied().max().unwrap_or(0);
        let slot = row_of.iter().map(|&(bi, j)| bi * per_row + j).collect();
        let visible = (0..b * s)
            .map(|r| {
                let (a, t) = (self.start[r], r % s);
                let n_doc = self.doc_len(r) / m;
                (offset[r], ((t - a + 1) / m).min(n_doc))
            })
            .collect();
        EntryLayout { ratio: m, per_row, first_row, prev, pos, slot, visible }
    }

    /// Length of the document holding row `r = b·S + t`.
    fn doc_len(&self, r: usize) -> usize {
        let (bi, t) = (r / self.seq, r % self.seq);
        self.docs[bi].iter().find(|&&(a, e)| a <= t && t < e).map_or(0, |&(a, e)| e - a)
    }
}

/// Compressed entries of one ratio over a batch with documents (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct EntryLayout {
    pub ratio: usize,
    /// Entries per batch row: the most of any row (shorter rows are zero-padded).
    pub per_row: usize,
    /// Entries in order (row, document, block): the first token row `b·S + a_k + i·m`.
    pub first_row: Vec<usize>,
    /// The previous block's entry in the same document (CSA overlap), or `None`.
    pub prev: Vec<Option<usize>>,
    /// RoPE position of each entry, `i·m` from its document's start.
    pub pos: Vec<usize>,
    /// Where each entry goes in the padded `[B·per_row]` layout.
    pub slot: Vec<usize>,
    /// Per row `(b, t)`: (row-entry index of its document's first entry, entries visible).
    pub visible: Vec<(usize, usize)>,
}

impl EntryLayout {
    /// Number of real entries (all rows).
    pub fn len(&self) -> usize {
        self.first_row.len()
    }

    pub fn is_empty(&self) -> bool {
        self.first_row.is_empty()
    }

    /// Token rows pooled by the entries, `m` per entry in order: `[len · m]`.
    pub fn token_rows(&self) -> Vec<u32> {
        let m = self.ratio;
        self.first_row.iter().flat_map(|&r| (r..r + m).map(|x| x as u32)).collect()
    }

    /// Index of each entry's previous block in `[pad; entries]` (0 = the pad row).
    pub fn prev_rows(&self) -> Vec<u32> {
        self.prev.iter().map(|p| p.map_or(0, |i| i as u32 + 1)).collect()
    }

    /// Whether the entries already sit in padded order (`slot[i] = i` for all `B·per_row`).
    pub fn is_dense(&self, batch: usize) -> bool {
        self.len() == batch * self.per_row && self.slot.iter().enumerate().all(|(i, &s)| i == s)
    }

    /// Source of each padded slot in `[entries; pad]` (`len()` = the zero pad row).
    pub fn slot_sources(&self, batch: usize) -> Vec<u32> {
        let mut src = vec![self.len() as u32; batch * self.per_row];
        for (i, &s) in self.slot.iter().enumerate() {
            src[s] = i as u32;
        }
        src
    }

    /// Row entries visible to query row `r` (`b·S + t`).
    pub fn visible_range(&self, r: usize) -> std::ops::Range<usize> {
        let (o, n) = self.visible[r];
        o..o + n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_are_validated() {
        assert!(validate_starts(&[], 5).is_ok());
        assert!(validate_starts(&[0, 2, 4], 5).is_ok());
        assert!(validate_starts(&[1, 3], 5).is_err());
        assert!(validate_starts(&[0, 3, 3], 5).is_err());
        assert!(validate_starts(&[0, 5], 5).is_err());
    }

    #[test]
    fn one_document_per_row_is_the_unpacked_layout() {
        let lay = DocLayout::new(&[&[], &[0]], 11);
        assert!(lay.is_unpacked());
        assert_eq!(lay.positions(), (0..22).map(|r| r % 11).collect::<Vec<_>>());
        let e = lay.entries(4);
        assert_eq!(e.per_row, 2);
        assert!(e.is_dense(2));
        assert_eq!(e.first_row, [0, 4, 11, 15]);
        assert_eq!(e.prev, [None, Some(0), None, Some(2)]);
        assert_eq!(e.pos, [0, 4, 0, 4]);
        let vis: Vec<usize> = (0..11).map(|t| e.visible[t].1).collect();
        assert_eq!(vis, [0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]);
    }

    #[test]
    fn blocks_restart_at_every_document() {
        // row 0: documents of 6, 9 and 7 tokens (the last may end in padding); row 1: one document
        let lay = DocLayout::new(&[&[0, 6, 15], &[]], 22);
        assert!(!lay.is_unpacked());
        let p = lay.positions();
        assert_eq!(&p[..22], &[0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(lay.key_starts()[14], 6);
        let e = lay.entries(4);
        // documents of 6, 9, 7 → 1, 2, 1 entries; row 1 → 5 entries
        assert_eq!(e.first_row, [0, 6, 10, 15, 22, 26, 30, 34, 38]);
        assert_eq!(e.prev, [None, None, Some(1), None, None, Some(4), Some(5), Some(6), Some(7)]);
        assert_eq!(e.pos, [0, 0, 4, 0, 0, 4, 8, 12, 16]);
        assert_eq!(e.per_row, 5);
        assert_eq!(e.slot, [0, 1, 2, 3, 5, 6, 7, 8, 9]);
        assert!(!e.is_dense(2));
        assert_eq!(e.slot_sources(2), [0, 1, 2, 3, 9, 4, 5, 6, 7, 8]);
        // t = 13 is position 7 of the second document: entries 1 and 2 of the row
        assert_eq!(e.visible_range(13), 1..3);
        assert_eq!(e.visible_range(9), 1..2);
        assert_eq!(e.visible_range(8), 1..1);
        assert_eq!(e.visible_range(5), 0..1);
        assert_eq!(e.visible_range(21), 3..4);
        assert_eq!(e.token_rows()[..8], [0, 1, 2, 3, 6, 7, 8, 9]);
        assert_eq!(e.prev_rows(), [0, 0, 2, 0, 0, 5, 6, 7, 8]);
    }
}
