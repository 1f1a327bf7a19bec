//! GGUF parser. The header (metadata + tensor index) is parsed from a prefix of the file; tensor
//! data is then read tensor by tensor, so the whole file never has to sit in one allocation.
//! A GGUF from the network is untrusted: every count, length and offset is bounded against the
//! file's real size with overflow-checked arithmetic before anything is allocated.

use std::collections::HashSet;

use super::metadata::{Metadata, Value};
use super::types::GgmlType;
use crate::error::{Error, Result};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// Caps well above any real model, far below what would exhaust memory.
const MAX_STRING_BYTES: u64 = 64 << 20;
const MAX_KV: u64 = 1 << 20;
const MAX_TENSORS: u64 = 1 << 20;
const MAX_ARRAY_DEPTH: u32 = 4;
const MAX_DIMS: u32 = 4;
const MAX_ELEMENTS: u64 = 1 << 44;

/// Where a tensor's bytes live and what they hold.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// `dims[0]` is the contiguous row length (ggml order).
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Absolute byte offset in the file.
    pub offset: u64,
    pub n_bytes: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A parsed GGUF header: version, metadata, tensor index.
#[derive(Clone, Debug)]
pub struct Gguf {
    pub version: u32,
    pub metadata: Metadata,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Absolute offset where the tensor data section starts.
    pub data_offset: u64,
    pub file_len: u64,
}

/// Random-access bytes: a file natively, a buffer in the browser.
pub trait ByteSource {
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;
}

impl ByteSource for [u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let start = usize::try_from(offset).map_err(|_| Error::malformed("offset out of range"))?;
        let src = start.checked_add(buf.len()).and_then(|end| self.get(start..end)).ok_or_else(|| Error::malformed(format!("read of {} bytes at {offset} runs past the end", buf.len())))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl ByteSource for std::fs::File {
    fn len(&self) -> u64 {
        self.metadata().map(|m| m.len()).unwrap_or(0)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = self;
        f.seek(SeekFrom::Start(offset))?;
        f.read_exact(buf)?;
        Ok(())
    }
}

impl Gguf {
    /// Parses the header from a source, reading a growing prefix until the header fits.
    pub fn read<S: ByteSource + ?Sized>(source: &S) -> Result<Gguf> {
        let file_len = source.len();
        let mut want = file_len.min(1 << 20);
        loop {
            let mut prefix = vec![0u8; want as usize];
            source.read_at(0, &mut prefix)?;
            match Gguf::parse(&prefix, file_len) {
                Err(Error::NeedMoreBytes { needed, .. }) => {
                    want = (needed as u64).max(want.saturating_mul(2)).min(file_len);
                }
                other => return other,
            }
        }
    }

    /// Parses the header from `prefix`, the first bytes of a file of `file_len` bytes. Returns
    /// `Error::NeedMoreBytes` when the header extends past the prefix but not past the file.
    pub fn parse(prefix: &[u8], file_len: u64) -> Result<Gguf> {
        let mut c = Cursor { buf: prefix, pos: 0, file_len };
        let magic = c.take(4)?;
        if magic != MAGIC {
            return Err(Error::NotGguf(format!("magic is {magic:02x?}, expected \"GGUF\"")));
        }
        let version = c.u32()?;
        if version.swap_bytes() == 2 || version.swap_bytes() == 3 {
            return Err(Error::NotGguf("big-endian GGUF files are not supported".into()));
        }
        if version != 2 && version != 3 {
            return Err(Error::UnsupportedVersion(version));
        }
        let n_tensors = c.u64()?;
        let n_kv = c.u64()?;
        // Every KV takes at least 13 bytes and every tensor info 24, so the counts are also bounded
        // by the file's size: a 100-byte file cannot claim a million entries.
        c.check_count("metadata entry count", n_kv, MAX_KV, 13)?;
        c.check_count("tensor count", n_tensors, MAX_TENSORS, 24)?;

        let mut metadata = Metadata::default();
        for _ in 0..n_kv {
            let key = c.string()?;
            let ty = c.u32()?;
            let value = c.value(ty, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(Error::malformed(format!("metadata key '{key}' appears twice")));
            }
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a.is_power_of_two() && a <= 1 << 16 => a,
                _ => return Err(Error::malformed(format!("general.alignment {} is not a power of two <= 65536", v.summary()))),
            },
        };

        let mut raw = Vec::with_capacity(n_tensors as usize);
        let mut names = HashSet::new();
        for _ in 0..n_tensors {
            let name = c.string()?;
            let n_dims = c.u32()?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(Error::malformed(format!("tensor '{name}' has {n_dims} dimensions (1 to {MAX_DIMS} allowed)")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(c.u64()?);
            }
            let ty_id = c.u32()?;
            let offset = c.u64()?;
            let ty =
                GgmlType::from_id(ty_id).ok_or_else(|| Error::UnsupportedTensorType { name: name.clone(), ty: format!("ggml type id {ty_id} (unknown)"), supported: super::types::SUPPORTED_TYPES })?;
            if !names.insert(name.clone()) {
                return Err(Error::malformed(format!("tensor '{name}' appears twice")));
            }
            raw.push((name, dims, ty, offset));
        }

        let data_offset = align_up(c.pos as u64, alignment).ok_or_else(|| Error::malformed("data offset overflows"))?;
        let mut tensors = Vec::with_capacity(raw.len());
        for (name, dims, ty, rel) in raw {
            let n_elements = dims.iter().try_fold(1u64, |acc, &d| if d == 0 { None } else { acc.checked_mul(d) });
            let n_elements = match n_elements {
                Some(n) if n <= MAX_ELEMENTS => n,
                _ => return Err(Error::malformed(format!("tensor '{name}' has invalid dimensions {dims:?}"))),
            };
            let n_bytes = ty
                .row_bytes(dims[0])
                .map_err(|e| Error::malformed(format!("tensor '{name}': {e}")))?
                .checked_mul(n_elements / dims[0])
                .ok_or_else(|| Error::malformed(format!("tensor '{name}' size overflows")))?;
            if rel % alignment != 0 {
                return Err(Error::malformed(format!("tensor '{name}' offset {rel} is not aligned to {alignment}")));
            }
            let offset = data_offset
                .checked_add(rel)
                .filter(|o| o.checked_add(n_bytes).is_some_and(|end| end <= file_len))
                .ok_or_else(|| Error::malformed(format!("tensor '{name}' ({n_bytes} bytes at data offset {rel}) runs past the end of the {file_len}-byte file")))?;
            tensors.push(TensorInfo { name, dims, ty, offset, n_bytes });
        }

        let mut by_offset: Vec<&TensorInfo> = tensors.iter().collect();
        by_offset.sort_by_key(|t| t.offset);
        for pair in by_offset.windows(2) {
            if pair[0].offset + pair[0].n_bytes > pair[1].offset {
                return Err(Error::malformed(format!("tensors '{}' and '{}' overlap", pair[0].name, pair[1].name)));
            }
        }

        Ok(Gguf { version, metadata, tensors, alignment, data_offset, file_len })
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Reads one tensor's raw bytes (still quantized).
    pub fn tensor_data<S: ByteSource + ?Sized>(&self, source: &S, info: &TensorInfo) -> Result<Vec<u8>> {
        let len = usize::try_from(info.n_bytes).map_err(|_| Error::malformed("tensor too large for this platform"))?;
        let mut buf = vec![0u8; len];
        source.read_at(info.offset, &mut buf)?;
        Ok(buf)
    }

    /// `general.architecture`, e.g. "llama".
    pub fn architecture(&self) -> Result<&str> {
        self.metadata.get_str("general.architecture")
    }

    /// Drops the vocabulary arrays once the tokenizer is built from them (Gemma 3's 262k tokens,
    /// scores and types take 26 MiB as metadata values); their length stays as
    /// `{arch}.vocab_size`, which the model's config reads.
    pub fn release_vocabulary(&mut self) -> Result<()> {
        let key = format!("{}.vocab_size", self.architecture()?);
        if !self.metadata.contains(&key) {
            if let Ok(tokens) = self.metadata.get_array("tokenizer.ggml.tokens") {
                let n = u32::try_from(tokens.len()).map_err(|_| Error::malformed("more than 2^32 tokens"))?;
                self.metadata.insert(key, Value::U32(n));
            }
        }
        for k in ["tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type", "tokenizer.ggml.merges"] {
            self.metadata.remove(k);
        }
        Ok(())
    }
}

fn align_up(x: u64, a: u64) -> Option<u64> {
    x.checked_add(a - 1).map(|v| v / a * a)
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    file_len: u64,
}

impl<'a> Cursor<'a> {
    fn remaining_in_file(&self) -> u64 {
        self.file_len.saturating_sub(self.pos as u64)
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8]> {
        if n > self.remaining_in_file() {
            return Err(Error::malformed(format!("truncated: {n} bytes needed at offset {} but the file has {} bytes", self.pos, self.file_len)));
        }
        let end = self.pos + n as usize;
        if end > self.buf.len() {
            return Err(Error::NeedMoreBytes { have: self.buf.len(), needed: end });
        }
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N as u64)?.try_into().expect("take returns N bytes"))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// Rejects a count that is over `cap` or that could not fit in the rest of the file.
    fn check_count(&self, what: &str, n: u64, cap: u64, min_item_bytes: u64) -> Result<()> {
        if n > cap || n > self.remaining_in_file() / min_item_bytes {
            return Err(Error::malformed(format!("{what} {n} is impossible (limit {cap}, and {} bytes remain in the file)", self.remaining_in_file())));
        }
        Ok(())
    }

    fn string(&mut self) -> Result<String> {
        let len = self.u64()?;
        if len > MAX_STRING_BYTES {
            return Err(Error::malformed(format!("string of {len} bytes exceeds the {MAX_STRING_BYTES}-byte limit")));
        }
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| Error::malformed(format!("string at offset {} is not UTF-8", self.pos)))
    }

    fn value(&mut self, ty: u32, depth: u32) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>()?[0]),
            1 => Value::I8(self.array::<1>()?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array()?)),
            3 => Value::I16(i16::from_le_bytes(self.array()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.array()?)),
            6 => Value::F32(f32::from_le_bytes(self.array()?)),
            7 => match self.array::<1>()?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(Error::malformed(format!("bool value {b} is neither 0 nor 1"))),
            },
            8 => Value::String(self.string()?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(Error::malformed("metadata arrays nested too deeply"));
                }
                let elem = self.u32()?;
                let n = self.u64()?;
                let min_size = match elem {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10 | 11 | 12 => 8,
                    9 => 12,
                    _ => return Err(Error::malformed(format!("unknown metadata value type {elem} in array"))),
                };
                self.check_count("array length", n, u64::MAX, min_size)?;
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(elem, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.array()?)),
            12 => Value::F64(f64::from_le_bytes(self.array()?)),
            _ => return Err(Error::malformed(format!("unknown metadata value type {ty}"))),
        })
    }
}
