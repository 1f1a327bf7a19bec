// The test app: exposes the package to the Playwright driver (tests/npm/*.test.mjs).
import { createEngine, createRouter, FerroError, ResponseCache } from "ferrolm";

window.ferrolm = { createEngine, createRouter, FerroError, ResponseCache };
document.getElementById("status").textContent = "ready";
