// Records, for each invocation of one 64-wide workgroup, its subgroup lane and the subgroup
// size. The engine uses subgroup reductions only where lanes follow local_invocation_index,
// which WebGPU does not promise.
@group(0) @binding(0) var<storage, read_write> out: array<u32>;

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32, @builtin(subgroup_size) size: u32) {
    out[lid * 2u] = lane;
    out[lid * 2u + 1u] = size;
}
