// Runs the official conformance suite against CONFORMANCE_TEST_URL.
// Driven by scripts/run_conformance.py; see that script for the full runner.
import { runConformanceTests } from "@durable-streams/server-conformance-tests"

const baseUrl = process.env.CONFORMANCE_TEST_URL
if (!baseUrl) {
  throw new Error("CONFORMANCE_TEST_URL must be set (e.g. http://127.0.0.1:4437)")
}

// CONFORMANCE_SUBSCRIPTIONS=1 (run_conformance.py --subscriptions) adds the
// suite's "Reserved subscription APIs" block.
runConformanceTests({ baseUrl, subscriptions: process.env.CONFORMANCE_SUBSCRIPTIONS === "1" })
