// The KV cache's element format (KvType::F32): plain f32, exact against the reference; the
// interface of kv_f16.wgsl.
alias KvPair = vec2<f32>;
alias KvQuad = vec4<f32>;
fn kv_pack(v: vec2<f32>) -> KvPair { return v; }
fn kv_pair(w: KvPair) -> vec2<f32> { return w; }
fn kv_quad(w: KvQuad) -> vec4<f32> { return w; }
