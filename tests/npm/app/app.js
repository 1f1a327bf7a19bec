// The test app: exposes the package to the Playwright driver (tests/npm/package.test.mjs).
import { createEngine, FerroError } from "ferrolm";

window.ferrolm = { createEngine, FerroError };
document.getElementById("status").textContent = "ready";
