// Vitest config for the official Durable Streams conformance suite.
// Only our own conformance.test.mjs is included (vitest never collects tests
// from node_modules, so the package's bundled test file is unusable here).
import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["conformance.test.mjs"],
    // Adds the bearer token to every request when CONFORMANCE_AUTH_TOKEN is set.
    setupFiles: ["./auth_fetch.setup.mjs"],
    // The suite is one file whose tests share a server: run it sequentially.
    fileParallelism: false,
    sequence: { concurrent: false, shuffle: false },
    testTimeout: 30_000,
    hookTimeout: 30_000,
    teardownTimeout: 10_000,
    retry: 0,
  },
})
