#!/usr/bin/env node
// Starts the Node reference Durable Streams server (@durable-streams/server),
// the peer that trio_streams is checked and benchmarked against.
//
//   node tests/conformance/reference_server.mjs --port 4438 [--host 127.0.0.1]
//        [--data-dir DIR] [--long-poll-timeout-ms 500]
//
// Without --data-dir the server keeps streams in memory; with it, it uses its
// file-backed (LMDB + log) store. Once listening it prints one line to stdout:
//   reference server listening on http://HOST:PORT
// SIGTERM / SIGINT stop it cleanly (exit 0); a failed start exits 1.
import { mkdirSync } from "node:fs"
import { parseArgs } from "node:util"
import { DurableStreamTestServer } from "@durable-streams/server"

const STOP_GRACE_MS = 5_000

function usage(message) {
  console.error(`reference_server: ${message}`)
  console.error(
    "usage: reference_server.mjs --port N [--host H] [--data-dir DIR] [--long-poll-timeout-ms MS]"
  )
  process.exit(2)
}

function intOption(values, name, fallback, min) {
  const raw = values[name]
  if (raw === undefined) return fallback
  const value = Number(raw)
  if (!Number.isInteger(value) || value < min) usage(`--${name} must be an integer >= ${min}`)
  return value
}

function parseOptions() {
  let values
  try {
    ;({ values } = parseArgs({
      options: {
        port: { type: "string" },
        host: { type: "string", default: "127.0.0.1" },
        "data-dir": { type: "string" },
        "long-poll-timeout-ms": { type: "string" },
        help: { type: "boolean", short: "h" },
      },
      strict: true,
    }))
  } catch (err) {
    usage(err.message)
  }
  if (values.help) usage("help requested")
  const options = {
    port: intOption(values, "port", 0, 0),
    host: values.host,
    longPollTimeout: intOption(values, "long-poll-timeout-ms", 30_000, 1),
  }
  if (values["data-dir"]) {
    mkdirSync(values["data-dir"], { recursive: true })
    options.dataDir = values["data-dir"]
  }
  return options
}

async function stop(server, signal) {
  console.error(`reference_server: ${signal}, stopping`)
  // Open long-polls or keep-alive connections must not hold shutdown forever.
  const timer = setTimeout(() => {
    console.error("reference_server: graceful stop timed out, forcing exit")
    process.exit(1)
  }, STOP_GRACE_MS)
  timer.unref()
  // stop() closes idle sockets; after a moment, cut in-flight ones too
  // (`server.server` is the private http.Server: best effort).
  const cut = setTimeout(() => server.server?.closeAllConnections?.(), 1_000)
  cut.unref()
  try {
    await server.stop()
    process.exit(0)
  } catch (err) {
    console.error(`reference_server: stop failed: ${err?.stack ?? err}`)
    process.exit(1)
  }
}

async function main() {
  const options = parseOptions()
  const server = new DurableStreamTestServer(options)
  let stopping = false
  for (const signal of ["SIGTERM", "SIGINT", "SIGHUP"]) {
    process.on(signal, () => {
      if (stopping) process.exit(1)
      stopping = true
      stop(server, signal)
    })
  }
  const url = await server.start()
  console.log(`reference server listening on ${url}`)
}

process.on("unhandledRejection", (err) => {
  console.error(`reference_server: unhandled rejection: ${err?.stack ?? err}`)
  process.exit(1)
})

main().catch((err) => {
  console.error(`reference_server: failed to start: ${err?.stack ?? err}`)
  process.exit(1)
})
