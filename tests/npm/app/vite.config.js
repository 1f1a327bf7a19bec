// The same app built by Vite: the worker and the .wasm must be found from the bundle.
export default {
  build: { outDir: "dist", target: "es2022" },
  worker: { format: "es" },
  optimizeDeps: { exclude: ["ferrolm"] },
};
