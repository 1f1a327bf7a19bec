// The same app built by Vite: the worker and the .wasm must be found from the bundle. The plain
// ES modules page's import map goes: Vite resolves `ferrolm` itself, and the built page is served
// under a CSP that refuses inline scripts (an import map is one).
export default {
  build: { outDir: "dist", target: "es2022" },
  worker: { format: "es" },
  optimizeDeps: { exclude: ["ferrolm"] },
  plugins: [{ name: "drop-import-map", transformIndexHtml: (html) => html.replace(/<script type="importmap">.*?<\/script>\n?/s, "") }],
};
