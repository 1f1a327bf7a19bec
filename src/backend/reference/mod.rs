//! The exact f32 reference: the oracle every other backend is tested against, and a backend of
//! the engine in its own right (paged KV, batches of many sequences), so every engine test also
//! runs without an adapter.

mod forward;
pub mod ops;

use std::cell::RefCell;
use std::sync::Arc;

pub use forward::{CpuModel, KvCache, LayerKv, Logits, Rows};

use crate::engine::{picks_from_logits, Batch, ForwardModel, LastPicks, Limits, ModelOptions, Readback, Ready};
use crate::error::Result;
use crate::gguf::{ByteSource, Gguf};
use crate::model::Config;

/// The reference model behind the engine's trait: f32 weights and a paged f32 KV pool.
pub struct ReferenceModel {
    /// Shared, so tests and a draft model of the same file load the weights once.
    weights: Arc<CpuModel>,
    /// Per layer, K/V by slot (block * block_size + offset).
    kv: RefCell<Vec<LayerKv>>,
    limits: Limits,
    /// The last step's argmax picks, for chained tokens.
    last: LastPicks,
}

impl ReferenceModel {
    pub fn load<S: ByteSource + ?Sized>(gguf: &Gguf, source: &S, opts: &ModelOptions) -> Result<ReferenceModel> {
        Ok(Self::new(Arc::new(CpuModel::load(gguf, source)?), opts))
    }

    /// Sizes the pool for `weights` as `opts` asks (its memory grows as blocks are used).
    pub fn new(weights: Arc<CpuModel>, opts: &ModelOptions) -> ReferenceModel {
        // On the CPU a forward's cost grows with its rows almost linearly.
        let limits = Limits::for_cpu(&weights.config, opts, 4);
        ReferenceModel { kv: RefCell::new(weights.new_pool()), weights, limits, last: LastPicks::default() }
    }
}

impl ForwardModel for ReferenceModel {
    type Pending = Ready;

    fn config(&self) -> &Config {
        &self.weights.config
    }

    fn limits(&self) -> &Limits {
        &self.limits
    }

    fn describe(&self) -> String {
        "CPU f32 reference".into()
    }

    /// Computes the whole step now.
    fn submit(&self, b: &Batch, read: Readback) -> Result<Ready> {
        b.validate(&self.limits, self.weights.config.vocab_size)?;
        let tokens = self.last.resolve(b.tokens)?;
        let b = &Batch { tokens: &tokens, ..*b };
        let bs = self.limits.block_size as usize;
        let slot = |t: usize, pos: usize| b.block_tables[b.seq_ids[t] as usize][pos / bs] as usize * bs + pos % bs;
        let rows = Rows { tokens: b.tokens, positions: b.positions, slot: &slot, logit_rows: b.logit_rows };
        let mut logits = self.weights.forward_rows(&rows, &mut self.kv.borrow_mut())?;
        let picks = picks_from_logits(&mut logits, self.weights.config.vocab_size, read, b)?;
        self.last.remember(&picks);
        Ok(Ready(picks))
    }
}
