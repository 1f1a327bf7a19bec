//! Text <-> token ids, built with the `tokenizers` crate from a GGUF's vocabulary (or loaded from
//! a `tokenizer.json`). Byte-level BPE (`tokenizer.ggml.model = gpt2`) uses the pre-tokenizer
//! regexes llama.cpp picks for `tokenizer.ggml.pre`; SentencePiece vocabularies
//! (`tokenizer.ggml.model = llama`) merge pieces by the merged token's score ([`spm`]), with byte
//! fallback. Control tokens are parsed as single tokens on request, user-defined ones always.

mod spm;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::replace::Replace;
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::Split;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior, TokenizerImpl};

use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{Error, Result};
use crate::gguf::Metadata;
use spm::SpmModel;

/// llama.cpp's GPT-2 style word regex (`default`, `gpt2`, and the second stage of `smollm`).
const GPT2_REGEX: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF token types.
const TYPE_CONTROL: i64 = 3;
const TYPE_USER_DEFINED: i64 = 4;

fn tok_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

/// How vocabulary strings spell bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Spelling {
    /// GPT-2's byte-to-character table.
    ByteLevel,
    /// `▁` for a space, `<0xNN>` for a fallback byte; `space_prefix`: a space is put before the text.
    SentencePiece { space_prefix: bool },
}

/// Every token's vocabulary string in one buffer: 262k separate `String`s (Gemma 3) would cost
/// a pointer, two lengths and an allocation each.
struct TokenTexts {
    text: String,
    /// End of token i's text in `text`.
    ends: Vec<u32>,
}

impl TokenTexts {
    fn new<S: AsRef<str>>(tokens: &[S]) -> Result<TokenTexts> {
        let mut t = TokenTexts { text: String::with_capacity(tokens.iter().map(|s| s.as_ref().len()).sum()), ends: Vec::with_capacity(tokens.len()) };
        for tok in tokens.iter().map(AsRef::as_ref) {
            t.text.push_str(tok);
            t.ends.push(u32::try_from(t.text.len()).map_err(|_| Error::Tokenizer("the vocabulary's strings exceed 4 GiB".into()))?);
        }
        Ok(t)
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    fn get(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)? as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        Some(&self.text[start..end])
    }

    /// Every token's text, by id.
    fn iter(&self) -> impl Iterator<Item = &str> {
        self.ends.iter().scan(0, |start, &end| {
            let t = &self.text[*start..end as usize];
            *start = end as usize;
            Some(t)
        })
    }
}

/// The `tokenizers` pipeline around SentencePiece's scored merges ([`spm::SpmModel`]).
type SpmTokenizer = TokenizerImpl<SpmModel, NormalizerWrapper, PreTokenizerWrapper, PostProcessorWrapper, DecoderWrapper>;

/// The `tokenizers` instance: the crate's own models (byte-level BPE, `tokenizer.json` files),
/// or a SentencePiece vocabulary's.
enum Inner {
    Hf(Box<tokenizers::Tokenizer>),
    Spm(Box<SpmTokenizer>),
}

impl Inner {
    fn add_special_tokens(&mut self, tokens: &[AddedToken]) {
        match self {
            Inner::Hf(t) => t.add_special_tokens(tokens),
            Inner::Spm(t) => t.add_special_tokens(tokens),
        };
    }

    /// Whether special tokens' text is parsed is a setting of the instance: set per call.
    fn encode(&mut self, text: &str, parse_special: bool) -> tokenizers::Result<Vec<u32>> {
        let ids = match self {
            Inner::Hf(t) => {
                t.set_encode_special_tokens(!parse_special);
                t.encode(text, false)?.get_ids().to_vec()
            }
            Inner::Spm(t) => {
                t.set_encode_special_tokens(!parse_special);
                t.encode(text, false)?.get_ids().to_vec()
            }
        };
        Ok(ids)
    }

    fn decode(&self, ids: &[u32]) -> tokenizers::Result<String> {
        match self {
            Inner::Hf(t) => t.decode(ids, false),
            Inner::Spm(t) => t.decode(ids, false),
        }
    }
}

/// Cheap to clone: the big parts are shared.
#[derive(Clone)]
pub struct Tokenizer {
    /// One `tokenizers` instance for both kinds of encoding, under a lock (a second instance
    /// would double the largest part of the tokenizer).
    inner: Arc<Mutex<Inner>>,
    tokens: Arc<TokenTexts>,
    /// Control tokens (markers like `<|im_end|>`, not text).
    control: Arc<[bool]>,
    spelling: Spelling,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    stop: Vec<u32>,
    /// Bytes of the longest vocabulary entry.
    longest: usize,
}

impl Tokenizer {
    /// Builds the tokenizer a GGUF describes.
    pub fn from_gguf(meta: &Metadata) -> Result<Tokenizer> {
        let model = meta.get_str("tokenizer.ggml.model")?;
        let tokens = meta.get_str_array("tokenizer.ggml.tokens")?;
        if tokens.is_empty() {
            return Err(Error::Tokenizer("tokenizer.ggml.tokens is empty".into()));
        }
        let types = if meta.contains("tokenizer.ggml.token_type") { meta.get_i64_array("tokenizer.ggml.token_type")? } else { vec![1; tokens.len()] };
        if types.len() != tokens.len() {
            return Err(Error::Tokenizer(format!("{} token types for {} tokens", types.len(), tokens.len())));
        }
        let texts = Arc::new(TokenTexts::new(&tokens)?);
        let space_prefix = meta.opt_bool("tokenizer.ggml.add_space_prefix")?.unwrap_or(true);
        let spelling = if model == "gpt2" { Spelling::ByteLevel } else { Spelling::SentencePiece { space_prefix } };
        let mut inner = match model {
            "gpt2" => {
                let merges = meta
                    .get_str_array("tokenizer.ggml.merges")?
                    .iter()
                    .map(|m| m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())).ok_or_else(|| tok_err(format!("malformed merge '{m}'"))))
                    .collect::<Result<Vec<_>>>()?;
                let bpe = BPE::builder().vocab_and_merges(vocab_of(&tokens), merges).build().map_err(tok_err)?;
                let mut t = tokenizers::Tokenizer::new(bpe);
                t.with_pre_tokenizer(Some(byte_level_pre_tokenizer(meta.opt_str("tokenizer.ggml.pre")?.unwrap_or("default"))?));
                t.with_decoder(Some(ByteLevelDecoder::default()));
                Inner::Hf(Box::new(t))
            }
            "llama" => {
                let scores = meta.get_f32_array("tokenizer.ggml.scores")?;
                if scores.len() != tokens.len() {
                    return Err(Error::Tokenizer(format!("{} scores for {} tokens", scores.len(), tokens.len())));
                }
                match SpmModel::new(texts.clone(), &scores, &types) {
                    Some(m) => {
                        let mut t = SpmTokenizer::new(m);
                        spm_pipeline(&mut t, space_prefix)?;
                        Inner::Spm(Box::new(t))
                    }
                    None => Inner::Hf(Box::new(spm_as_bpe(&tokens, &scores, &types, space_prefix)?)),
                }
            }
            other => return Err(Error::Tokenizer(format!("unsupported tokenizer model '{other}'; ferrolm reads 'gpt2' (byte-level BPE) and 'llama' (SentencePiece)"))),
        };
        inner.add_special_tokens(&added_tokens(&tokens, &types));
        let id = |k: &str| -> Result<Option<u32>> { meta.opt_u32(k) };
        let (bos, eos, eot) = (id("tokenizer.ggml.bos_token_id")?, id("tokenizer.ggml.eos_token_id")?, id("tokenizer.ggml.eot_token_id")?);
        // End-of-turn markers of common chat formats end generation too.
        let mut stop: Vec<u32> = [eos, eot].into_iter().flatten().collect();
        for marker in ["<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>", "<|endoftext|>"] {
            if let Some(&i) = tokens.iter().position(|t| *t == marker).as_ref() {
                if types[i] == TYPE_CONTROL && !stop.contains(&(i as u32)) {
                    stop.push(i as u32);
                }
            }
        }
        let add_bos = meta.opt_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(model == "llama");
        let control = types.iter().map(|&t| t == TYPE_CONTROL).collect();
        Ok(Tokenizer::finish(inner, texts, control, spelling, bos, eos, add_bos, stop))
    }

    /// Loads a Hugging Face `tokenizer.json`; BOS/EOS are looked up among its special tokens.
    pub fn from_json(bytes: &[u8]) -> Result<Tokenizer> {
        let inner = tokenizers::Tokenizer::from_bytes(bytes).map_err(tok_err)?;
        let n = inner.get_vocab_size(true);
        let tokens: Vec<String> = (0..n as u32).map(|i| inner.id_to_token(i).unwrap_or_default()).collect();
        let find = |names: &[&str]| names.iter().find_map(|s| inner.token_to_id(s));
        let bos = find(&["<|begin_of_text|>", "<s>", "<bos>", "<|endoftext|>"]);
        let eos = find(&["<|eot_id|>", "<|im_end|>", "<end_of_turn>", "</s>", "<eos>", "<|endoftext|>"]);
        let stop = eos.into_iter().collect();
        let specials = inner.get_added_tokens_decoder();
        let control = (0..n as u32).map(|i| specials.get(&i).is_some_and(|t| t.special)).collect();
        // Without the normalizer's details, assume a prepended space: forcing tokens then stays off.
        let spelling = if matches!(inner.get_decoder(), Some(DecoderWrapper::ByteLevel(_))) { Spelling::ByteLevel } else { Spelling::SentencePiece { space_prefix: true } };
        Ok(Tokenizer::finish(Inner::Hf(Box::new(inner)), Arc::new(TokenTexts::new(&tokens)?), control, spelling, bos, eos, false, stop))
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(inner: Inner, tokens: Arc<TokenTexts>, control: Vec<bool>, spelling: Spelling, bos: Option<u32>, eos: Option<u32>, add_bos: bool, stop: Vec<u32>) -> Tokenizer {
        let longest = tokens.iter().map(str::len).max().unwrap_or(1).max(1);
        Tokenizer { inner: Arc::new(Mutex::new(inner)), tokens, control: control.into(), spelling, bos, eos, add_bos, stop, longest }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // A panic while encoding leaves nothing half-written that a later call could see.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Token ids of `text`; never adds BOS. With `parse_special`, control tokens written in the
    /// text (`<|im_start|>`) become their single ids.
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>> {
        self.inner().encode(text, parse_special).map_err(tok_err)
    }

    /// As `encode`, with BOS first when the model wants it.
    pub fn encode_prompt(&self, text: &str, parse_special: bool) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        if let (true, Some(bos)) = (self.add_bos, self.bos) {
            ids.push(bos);
        }
        ids.extend(self.encode(text, parse_special)?);
        Ok(ids)
    }

    /// The most bytes a text of `context` tokens can have, so that longer prompts are refused
    /// before tokenizing: no token stands for more bytes than its vocabulary spelling has
    /// (byte-level BPE spells a byte in one or two, SentencePiece a space as three, a fallback
    /// byte as six).
    pub fn max_prompt_bytes(&self, context: usize) -> usize {
        context.saturating_mul(self.longest)
    }

    /// As `encode_prompt` for a request's text, refused at once when it has more bytes than
    /// `context` tokens can hold.
    pub fn encode_request(&self, text: &str, parse_special: bool, context: usize) -> Result<Vec<u32>> {
        let limit = self.max_prompt_bytes(context);
        if text.len() > limit {
            return Err(Error::PromptTooLarge { bytes: text.len(), limit });
        }
        self.encode_prompt(text, parse_special)
    }

    /// Text of `ids`, special tokens included as their text.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.tokens.len()) {
            return Err(Error::TokenOutOfRange { id: bad, vocab: self.tokens.len() });
        }
        self.inner().decode(ids).map_err(tok_err)
    }

    /// The tokenizer as a Hugging Face `tokenizer.json` (a SentencePiece vocabulary as the
    /// equivalent BPE with its merge table).
    pub fn to_json(&self) -> Result<String> {
        let mut inner = self.inner();
        let mut spm;
        let t = match &mut *inner {
            Inner::Hf(t) => t,
            Inner::Spm(t) => {
                let (tokens, scores, types) = t.get_model().parts();
                let Spelling::SentencePiece { space_prefix } = self.spelling else { unreachable!("SentencePiece vocabularies are spelled so") };
                spm = spm_as_bpe(&tokens, scores, &types, space_prefix)?;
                spm.add_special_tokens(&added_tokens(&tokens, &types));
                &mut spm
            }
        };
        t.set_encode_special_tokens(false);
        t.to_string(false).map_err(tok_err)
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Tokens that end generation: EOS, EOT and the end-of-turn markers of chat formats.
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop
    }

    /// The raw vocabulary string of `id`.
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize)
    }

    /// The bytes each token stands for; a control token is 0xFF followed by its text (the
    /// convention of llguidance's token trie, where 0xFF never starts real text).
    pub fn token_bytes(&self) -> Vec<Vec<u8>> {
        let shifted = byte_level_shifted();
        self.tokens
            .iter()
            .zip(self.control.iter())
            .map(|(t, &control)| {
                if control {
                    return [&[0xFF], t.as_bytes()].concat();
                }
                match self.spelling {
                    Spelling::ByteLevel => byte_level_bytes(t, &shifted).unwrap_or_else(|| t.as_bytes().to_vec()),
                    Spelling::SentencePiece { .. } => match t.strip_prefix("<0x").and_then(|h| h.strip_suffix('>')).and_then(|h| u8::from_str_radix(h, 16).ok()) {
                        Some(b) if t.len() == 6 => vec![b],
                        _ => t.replace('▁', " ").into_bytes(),
                    },
                }
            })
            .collect()
    }

    /// Whether encoding a piece of text gives the tokens it has inside a longer text: false when
    /// the tokenizer puts a space before every text it encodes.
    pub fn encodes_pieces(&self) -> bool {
        !matches!(self.spelling, Spelling::SentencePiece { space_prefix: true })
    }
}

/// Byte-level BPE writes the bytes that are not printable as the characters from U+0100 on, in
/// byte order; the rest are themselves.
fn byte_level_printable(b: u8) -> bool {
    matches!(b, 33..=126 | 161..=172 | 174..=255)
}

/// The bytes written as U+0100, U+0101, ... in order.
fn byte_level_shifted() -> Vec<u8> {
    (0..=255u8).filter(|&b| !byte_level_printable(b)).collect()
}

/// A byte-level vocabulary string's bytes; None if it is not one.
fn byte_level_bytes(s: &str, shifted: &[u8]) -> Option<Vec<u8>> {
    s.chars()
        .map(|c| match c as u32 {
            c @ 0..=255 if byte_level_printable(c as u8) => Some(c as u8),
            c @ 256.. => shifted.get(c as usize - 256).copied(),
            _ => None,
        })
        .collect()
}

/// llama.cpp's pre-tokenizer for `tokenizer.ggml.pre`: regex splits, then bytes to symbols.
fn byte_level_pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper> {
    let regexes: &[&str] = match pre {
        "llama3" | "llama-bpe" | "llama-v3" => &[LLAMA3_REGEX],
        "qwen2" => &[QWEN2_REGEX],
        "smollm" | "starcoder" | "refact" | "codeshell" => &[r"\p{N}", GPT2_REGEX],
        // "gpt2", "default" and names ferrolm does not know use the GPT-2 regex.
        _ => &[GPT2_REGEX],
    };
    let mut stages: Vec<PreTokenizerWrapper> = regexes
        .iter()
        .map(|r| Split::new(tokenizers::pre_tokenizers::split::SplitPattern::Regex(r.to_string()), SplitDelimiterBehavior::Isolated, false).map(Into::into).map_err(tok_err))
        .collect::<Result<_>>()?;
    stages.push(ByteLevel::new(false, false, false).into());
    Ok(Sequence::new(stages).into())
}

/// Token text -> id (the last of equal texts, as a merge table would see them).
fn vocab_of(tokens: &[&str]) -> Vocab {
    tokens.iter().enumerate().map(|(i, t)| (t.to_string(), i as u32)).collect()
}

/// Control and user-defined tokens: matched in the text before the model runs.
fn added_tokens(tokens: &[&str], types: &[i64]) -> Vec<AddedToken> {
    types.iter().zip(tokens).filter(|(&t, _)| t == TYPE_CONTROL || t == TYPE_USER_DEFINED).map(|(&t, s)| AddedToken::from(s.to_string(), t == TYPE_CONTROL)).collect()
}

/// SentencePiece's text handling around its model: spaces as `▁` (one put first with
/// `space_prefix`), unknown bytes decoded from `<0xNN>` tokens.
fn spm_pipeline<M: tokenizers::Model>(t: &mut TokenizerImpl<M, NormalizerWrapper, PreTokenizerWrapper, PostProcessorWrapper, DecoderWrapper>, space_prefix: bool) -> Result<()> {
    let mut norms: Vec<NormalizerWrapper> = Vec::new();
    if space_prefix {
        norms.push(tokenizers::normalizers::prepend::Prepend::new("▁".into()).into());
    }
    norms.push(Replace::new(" ", "▁").map_err(tok_err)?.into());
    t.with_normalizer(Some(tokenizers::normalizers::Sequence::new(norms)));
    let mut decoders: Vec<DecoderWrapper> = vec![Replace::new("▁", " ").map_err(tok_err)?.into(), ByteFallback::default().into(), Fuse::default().into()];
    if space_prefix {
        decoders.push(tokenizers::decoders::strip::Strip::new(' ', 1, 0).into());
    }
    t.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(())
}

/// A SentencePiece vocabulary as the crate's BPE: every split of a normal token into two
/// tokens is a merge, ranked by the merged token's score (ties by id), unknown bytes as `<0xNN>`
/// tokens. Used for `tokenizer.json` export and when two tokens share a text.
fn spm_as_bpe(tokens: &[&str], scores: &[f32], types: &[i64], space_prefix: bool) -> Result<tokenizers::Tokenizer> {
    let vocab = vocab_of(tokens);
    let mut merges: Vec<(f32, u32, String, String)> = Vec::new();
    for (id, tok) in tokens.iter().enumerate() {
        if types[id] != 1 || tok.chars().count() < 2 {
            continue;
        }
        for (i, _) in tok.char_indices().skip(1) {
            let (a, b) = tok.split_at(i);
            if let (Some(&ia), true) = (vocab.get(a), vocab.contains_key(b)) {
                if types[ia as usize] == 1 || types[ia as usize] == 6 {
                    merges.push((scores[id], id as u32, a.to_string(), b.to_string()));
                }
            }
        }
    }
    // Higher score merges first; ties by id, as SentencePiece breaks them.
    merges.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
    let merges = merges.into_iter().map(|(_, _, a, b)| (a, b)).collect();
    let mut builder = BPE::builder().vocab_and_merges(vocab, merges).byte_fallback(true);
    if tokens.contains(&"<unk>") {
        builder = builder.unk_token("<unk>".into());
    }
    let mut t = tokenizers::Tokenizer::new(builder.build().map_err(tok_err)?);
    spm_pipeline(&mut t, space_prefix)?;
    Ok(t)
}

/// Incremental detokenizer: push ids one at a time and get back only text that is complete
/// (never half a UTF-8 character; SentencePiece's leading spaces come out right because the
/// previous token is decoded along with the new ones).
#[derive(Default)]
pub struct Detokenizer {
    ids: Vec<u32>,
    prefix: usize,
    read: usize,
}

impl Detokenizer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a token; returns the text that became complete (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let prefix_text = tok.decode(&self.ids[self.prefix..self.read])?;
        let text = tok.decode(&self.ids[self.prefix..])?;
        if text.len() > prefix_text.len() && !text.ends_with('\u{FFFD}') && text.starts_with(&prefix_text) {
            let new = text[prefix_text.len()..].to_string();
            self.prefix = self.read;
            self.read = self.ids.len();
            return Ok(new);
        }
        Ok(String::new())
    }

    /// Whatever is still held back (an incomplete character at the very end).
    pub fn finish(&mut self, tok: &Tokenizer) -> Result<String> {
        let prefix_text = tok.decode(&self.ids[self.prefix..self.read])?;
        let text = tok.decode(&self.ids[self.prefix..])?;
        self.prefix = self.ids.len();
        self.read = self.ids.len();
        Ok(text.get(prefix_text.len()..).unwrap_or_default().to_string())
    }
}
