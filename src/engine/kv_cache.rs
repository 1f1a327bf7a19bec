//! The paged KV cache's bookkeeping (the K/V data itself lives in the backend's per-layer
//! pool buffers): fixed-size blocks with reference counts, a free list, and the prefix cache.
//!
//! Prefix caching: a full block is keyed by a hash chained over its parent's key and its own
//! tokens. A lookup walks a prompt block by block and reuses every block whose key matches;
//! matches are confirmed by comparing the tokens and the parent block (and that parent's
//! generation, so a parent that was evicted and reused is never mistaken for the old one), so
//! hash collisions cannot alias. Cached blocks nobody references stay in the cache until the
//! pool runs short, then the least recently used one is evicted.

use std::collections::{BTreeMap, HashMap};

/// A chained block hash: `parent` is the parent block's key (0 for the first block).
pub type BlockHasher = fn(parent: u64, tokens: &[u32]) -> u64;

/// FNV-1a over the parent key and the tokens: fast, deterministic on every target.
pub fn chained_hash(parent: u64, tokens: &[u32]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ parent.rotate_left(17);
    for &t in tokens {
        for b in t.to_le_bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// What a cached block holds.
#[derive(Clone, Debug)]
struct CachedBlock {
    key: u64,
    /// Parent block and its generation when this block was computed.
    parent: Option<(u32, u64)>,
    tokens: Vec<u32>,
}

/// Counters for the engine's stats.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct PoolStats {
    pub n_blocks: usize,
    /// Blocks referenced by at least one sequence.
    pub used: usize,
    /// Blocks referenced by more than one sequence (a shared prefix).
    pub shared: usize,
    /// Blocks held only by the prefix cache (evictable).
    pub cached_free: usize,
    /// Blocks holding nothing.
    pub free: usize,
    /// Full blocks looked up / found in the prefix cache.
    pub lookups: u64,
    pub hits: u64,
    pub evictions: u64,
}

/// The block allocator and prefix cache.
pub struct BlockPool {
    block_size: usize,
    refs: Vec<u32>,
    /// Bumped whenever a block's contents are released for reuse.
    generation: Vec<u64>,
    cached: Vec<Option<CachedBlock>>,
    /// Key -> blocks with that key (more than one only on a hash collision).
    index: HashMap<u64, Vec<u32>>,
    /// Unreferenced cached blocks by last use (tick -> block), oldest first.
    lru: BTreeMap<u64, u32>,
    last_use: Vec<u64>,
    tick: u64,
    free: Vec<u32>,
    hasher: BlockHasher,
    stats: PoolStats,
}

/// A prefix found in the cache: the blocks (already retained) and the key of the last one.
#[derive(Clone, Debug, Default)]
pub struct PrefixHit {
    pub blocks: Vec<u32>,
    pub last_key: u64,
}

impl BlockPool {
    pub fn new(n_blocks: usize, block_size: usize) -> Self {
        Self::with_hasher(n_blocks, block_size, chained_hash)
    }

    /// A pool with another hash function (tests use a colliding one).
    pub fn with_hasher(n_blocks: usize, block_size: usize, hasher: BlockHasher) -> Self {
        BlockPool {
            block_size,
            refs: vec![0; n_blocks],
            generation: vec![0; n_blocks],
            cached: vec![None; n_blocks],
            index: HashMap::new(),
            lru: BTreeMap::new(),
            last_use: vec![0; n_blocks],
            tick: 0,
            // Popped from the end: block 0 is handed out first.
            free: (0..n_blocks as u32).rev().collect(),
            hasher,
            stats: PoolStats { n_blocks, ..Default::default() },
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks that an allocation could get now (free plus evictable).
    pub fn available(&self) -> usize {
        self.free.len() + self.lru.len()
    }

    pub fn stats(&self) -> PoolStats {
        let (used, shared) = self.refs.iter().fold((0, 0), |(u, s), &r| (u + (r > 0) as usize, s + (r > 1) as usize));
        PoolStats { used, shared, cached_free: self.lru.len(), free: self.free.len(), ..self.stats }
    }

    pub fn refs(&self, block: u32) -> u32 {
        self.refs[block as usize]
    }

    /// Whether the prefix cache holds the block (findable by later requests).
    pub fn is_cached(&self, block: u32) -> bool {
        self.cached[block as usize].is_some()
    }

    /// A block for new contents, with one reference: a free one, else the least recently used
    /// cached block nobody references (evicted from the cache). `None` when every block is in use.
    pub fn allocate(&mut self) -> Option<u32> {
        let block = match self.free.pop() {
            Some(b) => b,
            None => {
                let (&tick, &b) = self.lru.iter().next()?;
                self.lru.remove(&tick);
                self.uncache(b);
                self.stats.evictions += 1;
                b
            }
        };
        self.generation[block as usize] += 1;
        self.refs[block as usize] = 1;
        Some(block)
    }

    fn uncache(&mut self, b: u32) {
        if let Some(c) = self.cached[b as usize].take() {
            if let Some(list) = self.index.get_mut(&c.key) {
                list.retain(|&x| x != b);
                if list.is_empty() {
                    self.index.remove(&c.key);
                }
            }
        }
    }

    fn touch(&mut self, b: u32) {
        self.tick += 1;
        self.last_use[b as usize] = self.tick;
    }

    /// Empties the prefix cache of every block nobody references (blocks in use keep their
    /// entries until released).
    pub fn clear_cache(&mut self) {
        for (_, b) in std::mem::take(&mut self.lru) {
            self.uncache(b);
            self.free.push(b);
        }
    }

    /// Adds a reference to a block (taking it out of the eviction order).
    pub fn retain(&mut self, b: u32) {
        if self.refs[b as usize] == 0 {
            self.lru.remove(&self.last_use[b as usize]);
        }
        self.refs[b as usize] += 1;
    }

    /// Drops a reference. An unreferenced block stays in the prefix cache (evictable) if it is
    /// cached, else it is free.
    pub fn release(&mut self, b: u32) {
        let r = &mut self.refs[b as usize];
        assert!(*r > 0, "block {b} released more often than retained");
        *r -= 1;
        if *r == 0 {
            if self.cached[b as usize].is_some() {
                self.touch(b);
                self.lru.insert(self.last_use[b as usize], b);
            } else {
                self.free.push(b);
            }
        }
    }

    /// Releases every block of a sequence's table.
    pub fn release_all(&mut self, blocks: &[u32]) {
        for &b in blocks.iter().rev() {
            self.release(b);
        }
    }

    /// The key of a block whose parent has key `parent_key` and which holds `tokens`.
    pub fn key(&self, parent_key: u64, tokens: &[u32]) -> u64 {
        (self.hasher)(parent_key, tokens)
    }

    /// The longest cached run of full blocks that `tokens` starts with, at most `max_blocks`;
    /// each block found is retained for the caller.
    pub fn lookup(&mut self, tokens: &[u32], max_blocks: usize) -> PrefixHit {
        let mut hit = PrefixHit::default();
        let mut parent: Option<(u32, u64)> = None;
        for chunk in tokens.chunks_exact(self.block_size).take(max_blocks) {
            self.stats.lookups += 1;
            let key = self.key(hit.last_key, chunk);
            let found = self.index.get(&key).and_then(|list| {
                list.iter().copied().find(|&b| {
                    let c = self.cached[b as usize].as_ref().expect("indexed blocks are cached");
                    c.parent == parent && c.tokens == chunk
                })
            });
            let Some(b) = found else { break };
            self.stats.hits += 1;
            self.retain(b);
            self.touch(b);
            hit.blocks.push(b);
            hit.last_key = key;
            parent = Some((b, self.generation[b as usize]));
        }
        hit
    }

    /// Records that `block` (referenced by the caller) now holds the K/V of `tokens`, a full
    /// block whose parent is `parent` (None for the first block) with key `parent_key`. Returns
    /// the block's key. If an identical block is cached already the new one stays uncached.
    pub fn register(&mut self, block: u32, parent: Option<u32>, parent_key: u64, tokens: &[u32]) -> u64 {
        debug_assert_eq!(tokens.len(), self.block_size);
        let key = self.key(parent_key, tokens);
        let parent = parent.map(|p| (p, self.generation[p as usize]));
        if self.cached[block as usize].is_some() {
            return key;
        }
        let list = self.index.entry(key).or_default();
        let duplicate = list.iter().any(|&b| {
            let c = self.cached[b as usize].as_ref().expect("indexed blocks are cached");
            c.parent == parent && c.tokens == tokens
        });
        if !duplicate {
            list.push(block);
            self.cached[block as usize] = Some(CachedBlock { key, parent, tokens: tokens.to_vec() });
        }
        key
    }
}
