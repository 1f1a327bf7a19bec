#!/usr/bin/env python3
"""Static file server for the demo page and the browser tests, on loopback only.

Serves several folders under URL prefixes (`--mount /models=models`), with the wasm MIME type and
CORS headers so a test page on another local port may fetch model files. `--isolated` adds the
COOP/COEP headers that make pages cross-origin isolated (SharedArrayBuffer, so wasm threads);
`--csp` a strict Content Security Policy (same-origin scripts, workers and fetches; wasm allowed,
no eval, no inline script or style, no blob: workers).
"""
import argparse
import http.server
import os
import socketserver
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--mount", action="append", default=[], help="URLPREFIX=DIR, e.g. /models=models")
    ap.add_argument("--log", help="append each request's path to this file (tests count fetches)")
    ap.add_argument("--isolated", action="store_true", help="send COOP/COEP (pages get wasm threads)")
    ap.add_argument("--csp", action="store_true", help="send a strict Content-Security-Policy")
    ap.add_argument("root", nargs="?", default=".")
    args = ap.parse_args()
    mounts = sorted((p.split("=", 1) for p in args.mount), key=lambda m: -len(m[0]))
    root = os.path.abspath(args.root)

    class Handler(http.server.SimpleHTTPRequestHandler):
        extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                          ".wasm": "application/wasm", ".js": "text/javascript", ".mjs": "text/javascript"}

        def translate_path(self, path):
            clean = path.split("?", 1)[0].split("#", 1)[0]
            for prefix, folder in mounts:
                if clean == prefix or clean.startswith(prefix.rstrip("/") + "/"):
                    rel = clean[len(prefix.rstrip("/")):].lstrip("/")
                    return os.path.join(os.path.abspath(folder), *[p for p in rel.split("/") if p not in ("", "..")])
            rel = clean.lstrip("/")
            return os.path.join(root, *[p for p in rel.split("/") if p not in ("", "..")])

        def end_headers(self):
            self.send_header("Access-Control-Allow-Origin", "*")
            self.send_header("Cross-Origin-Resource-Policy", "cross-origin")
            if args.isolated:
                self.send_header("Cross-Origin-Opener-Policy", "same-origin")
                self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
            if args.csp:
                self.send_header("Content-Security-Policy", "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'")
            self.send_header("Cache-Control", "no-cache")
            super().end_headers()

        def log_message(self, fmt, *a):
            if args.log:
                with open(args.log, "a") as f:
                    f.write(f"{self.command} {self.path}\n")

    socketserver.ThreadingTCPServer.allow_reuse_address = True
    with socketserver.ThreadingTCPServer(("127.0.0.1", args.port), Handler) as httpd:
        print(f"serving on http://127.0.0.1:{args.port}/", flush=True)
        try:
            httpd.serve_forever()
        except KeyboardInterrupt:
            sys.exit(0)


if __name__ == "__main__":
    main()
