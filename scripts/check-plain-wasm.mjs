// The npm package's plain binaries must load in browsers without relaxed SIMD: each must
// validate in a WebAssembly engine that lacks it (node 20's V8). Where this node runs relaxed
// SIMD itself the check cannot tell, and says so. Usage: node check-plain-wasm.mjs FILE...
import { readFileSync } from "node:fs";

// A module of one relaxed-SIMD instruction (`i32x4.relaxed_trunc_f32x4_s`), as pkg/src/host.ts.
const RELAXED_PROBE = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 25, 1, 23, 0, 253, 12, ...new Array(16).fill(0), 253, 129, 2, 11]);

if (WebAssembly.validate(RELAXED_PROBE)) {
  console.log(`check-plain-wasm: node ${process.version} runs relaxed SIMD, so it cannot check that the plain binaries do without it (skipped)`);
} else {
  for (const file of process.argv.slice(2)) {
    if (!WebAssembly.validate(readFileSync(file))) {
      console.error(`check-plain-wasm: ${file} does not validate without relaxed SIMD (a relaxed-SIMD instruction outside the relaxed-simd feature's kernels?)`);
      process.exit(1);
    }
  }
  console.log(`check-plain-wasm: ${process.argv.length - 2} binaries validate without relaxed SIMD`);
}
