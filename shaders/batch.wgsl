// The step's batch description, written before each forward by `batch_to_words`
// (src/backend/webgpu/batch.rs).
// Header: [n_tokens, n_logit_rows, max_tokens, max_blocks_per_seq, block_size, 0, 0, 0], then
// tokens[max_tokens], positions[max_tokens], seq_ids[max_tokens], logit_rows[max_tokens],
// sums_temperatures[max_tokens] (f32 bits, one a logit row),
// block_tables[max_seqs][max_blocks_per_seq] (physical KV block of each logical block).
fn n_tokens() -> u32 { return batch[0]; }
fn n_logit_rows() -> u32 { return batch[1]; }
fn token_id(t: u32) -> u32 { return batch[8u + t]; }
fn position(t: u32) -> u32 { return batch[8u + batch[2] + t]; }
fn seq_id(t: u32) -> u32 { return batch[8u + 2u * batch[2] + t]; }
fn logit_row(i: u32) -> u32 { return batch[8u + 3u * batch[2] + i]; }
// The temperature the LM head takes logit row i's partial sums at (matmul.wgsl's PARTIALS):
// 1, or a row's own where its draw starts from them (sample.wgsl's `from_partial_mass`).
fn sums_temperature(i: u32) -> f32 { return bitcast<f32>(batch[8u + 4u * batch[2] + i]); }
fn kv_slot(seq: u32, pos: u32) -> u32 {
    let bs = batch[4];
    let block = batch[8u + 5u * batch[2] + seq * batch[3] + pos / bs];
    return block * bs + pos % bs;
}
