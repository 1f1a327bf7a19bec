//! A SentencePiece vocabulary's BPE as a `tokenizers` model, without a merge table: two adjacent
//! pieces merge when their concatenation is a normal token, and the merge with the best score
//! goes first (SentencePiece's rule, and llama.cpp's). This is the same tokenization as the
//! crate's BPE given every such pair as a merge ranked by score, which for Gemma 3's 262k tokens
//! is 513k merges and two vocabulary maps; here the pieces are found by binary search in the
//! sorted vocabulary (40.6 MiB less wasm memory for Gemma 3, measured). One difference: a character
//! with no token, no byte tokens and no `<unk>` is an error here, where the table drops it.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokenizers::models::bpe::BpeTrainer;
use tokenizers::{Model, Token};

use super::TokenTexts;

/// GGUF token types a merge may start from (normal, byte) and produce (normal).
const NORMAL: u8 = 1;
const BYTE: u8 = 6;

pub struct SpmModel {
    texts: Arc<TokenTexts>,
    scores: Vec<f32>,
    types: Vec<u8>,
    /// Token ids sorted by their text.
    sorted: Vec<u32>,
    /// The `<0xNN>` token of each byte, for characters without a token of their own.
    bytes: [Option<u32>; 256],
    unk: Option<u32>,
}

/// A merge waiting in the queue: the piece at `pos` with the next one, giving `id`. Pieces merge
/// best score first, ties by the merged token's id, then by the split point and the position:
/// the order a merge table sorted that way would give.
#[derive(PartialEq)]
struct Merge {
    score: f32,
    id: u32,
    split: usize,
    pos: usize,
}

impl Eq for Merge {}

impl Ord for Merge {
    /// Greater is popped first from the (max-)heap.
    fn cmp(&self, o: &Self) -> Ordering {
        self.score.total_cmp(&o.score).then(o.id.cmp(&self.id)).then(o.split.cmp(&self.split)).then(o.pos.cmp(&self.pos))
    }
}

impl PartialOrd for Merge {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

#[derive(Clone, Copy)]
struct Piece {
    id: u32,
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

impl SpmModel {
    /// `None` when two tokens share a text (a merge table would then keep only the last of
    /// them; the caller uses the crate's BPE instead).
    pub fn new(texts: Arc<TokenTexts>, scores: &[f32], types: &[i64]) -> Option<SpmModel> {
        let mut sorted: Vec<u32> = (0..texts.len() as u32).collect();
        sorted.sort_unstable_by(|&a, &b| texts.get(a as usize).cmp(&texts.get(b as usize)));
        if sorted.windows(2).any(|w| texts.get(w[0] as usize) == texts.get(w[1] as usize)) {
            return None;
        }
        let types = types.iter().map(|&t| u8::try_from(t).unwrap_or(0)).collect();
        let mut m = SpmModel { texts, scores: scores.to_vec(), types, sorted, bytes: [None; 256], unk: None };
        m.unk = m.find("<unk>", "");
        m.bytes = std::array::from_fn(|b| m.find(&format!("<{b:#04X}>"), ""));
        Some(m)
    }

    /// The vocabulary's texts, scores and GGUF types (to write it out as a merge table).
    pub fn parts(&self) -> (Vec<&str>, &[f32], Vec<i64>) {
        (self.texts.iter().collect(), &self.scores, self.types.iter().map(|&t| t as i64).collect())
    }

    fn text(&self, id: u32) -> &str {
        self.texts.get(id as usize).unwrap_or("")
    }

    /// The id of the token spelled `a` followed by `b`.
    fn find(&self, a: &str, b: &str) -> Option<u32> {
        let key_cmp = |id: &u32| {
            let t = self.text(*id).as_bytes();
            let head = t.len().min(a.len());
            t[..head].cmp(a.as_bytes()).then_with(|| if t.len() < a.len() { Ordering::Less } else { t[head..].cmp(b.as_bytes()) })
        };
        self.sorted.binary_search_by(key_cmp).ok().map(|i| self.sorted[i])
    }

    /// The merge of pieces `l` and `r` (at `pos`), if their concatenation is a normal token.
    fn merge(&self, l: &Piece, r: &Piece, pos: usize) -> Option<Merge> {
        if !matches!(self.types[l.id as usize], NORMAL | BYTE) {
            return None;
        }
        let a = self.text(l.id);
        let id = self.find(a, self.text(r.id))?;
        (self.types[id as usize] == NORMAL).then(|| Merge { score: self.scores[id as usize], id, split: a.len(), pos })
    }

    /// The word's initial pieces: its characters, or a character's bytes as `<0xNN>` tokens.
    fn pieces(&self, word: &str) -> tokenizers::Result<Vec<Piece>> {
        let mut out: Vec<Piece> = Vec::with_capacity(word.len());
        let mut add = |id: u32, start: usize, len: usize| {
            let i = out.len();
            out.push(Piece { id, start, len, prev: i.checked_sub(1), next: Some(i + 1) });
        };
        for (start, c) in word.char_indices() {
            let s = &word[start..start + c.len_utf8()];
            if let Some(id) = self.find(s, "") {
                add(id, start, s.len());
                continue;
            }
            let bytes: Option<Vec<u32>> = s.bytes().map(|b| self.bytes[b as usize]).collect();
            match (bytes, self.unk) {
                (Some(ids), _) => ids.into_iter().enumerate().for_each(|(k, id)| add(id, start + k, 1)),
                (None, Some(unk)) => add(unk, start, s.len()),
                (None, None) => return Err(format!("the character {c:?} has no token, no byte tokens and there is no <unk>").into()),
            }
        }
        if let Some(last) = out.last_mut() {
            last.next = None;
        }
        Ok(out)
    }
}

impl Model for SpmModel {
    type Trainer = BpeTrainer;

    fn tokenize(&self, word: &str) -> tokenizers::Result<Vec<Token>> {
        let mut p = self.pieces(word)?;
        let mut queue: BinaryHeap<Merge> = (1..p.len()).filter_map(|i| self.merge(&p[i - 1], &p[i], i - 1)).collect();
        while let Some(m) = queue.pop() {
            // Skip entries made stale by an earlier merge: the piece is gone, or it and its
            // neighbour no longer make this token.
            let (l, Some(r)) = (p[m.pos], p[m.pos].next) else { continue };
            if l.len == 0 || self.merge(&l, &p[r], m.pos).is_none_or(|now| now.id != m.id) {
                continue;
            }
            let right = p[r];
            p[m.pos] = Piece { id: m.id, len: l.len + right.len, next: right.next, ..l };
            p[r].len = 0;
            if let Some(n) = right.next {
                p[n].prev = Some(m.pos);
            }
            if let Some(prev) = l.prev {
                queue.extend(self.merge(&p[prev], &p[m.pos], prev));
            }
            if let Some(n) = right.next {
                queue.extend(self.merge(&p[m.pos], &p[n], m.pos));
            }
        }
        Ok(p.iter().filter(|x| x.len > 0).map(|x| Token::new(x.id, self.text(x.id).to_string(), (x.start, x.start + x.len))).collect())
    }

    fn token_to_id(&self, token: &str) -> Option<u32> {
        self.find(token, "")
    }

    fn id_to_token(&self, id: u32) -> Option<String> {
        self.texts.get(id as usize).map(str::to_string)
    }

    fn get_vocab(&self) -> HashMap<String, u32> {
        self.texts.iter().zip(0..).map(|(t, i)| (t.to_string(), i)).collect()
    }

    fn get_vocab_size(&self) -> usize {
        self.texts.len()
    }

    fn save(&self, _: &Path, _: Option<&str>) -> tokenizers::Result<Vec<PathBuf>> {
        Err("a SentencePiece vocabulary is saved through Tokenizer::to_json".into())
    }

    fn get_trainer(&self) -> BpeTrainer {
        BpeTrainer::default()
    }
}
