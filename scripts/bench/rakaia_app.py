"""Serves rakaia-streams for the bench; runs in rakaia's own venv (build/rakaia-venv).

    build/rakaia-venv/bin/python scripts/bench/rakaia_app.py --port P --data-dir D [--long-poll-timeout-ms 500]

rakaia 0.9.0's durable configuration: ``create_app`` (rakaia/protocol_server.py)
over ``JsonlStreamStore(dir, fsync=True)`` (rakaia/jsonl_store.py: an append
returns after its JSONL segment is fsynced), under uvicorn with one worker.
Stream paths are the whole URL path, so /v1/stream/NAME works as is.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--long-poll-timeout-ms", type=int, default=30_000)
    args = parser.parse_args(argv)
    import uvicorn
    from rakaia import JsonlStreamStore, ServerOptions, create_app

    options = ServerOptions(long_poll_timeout=args.long_poll_timeout_ms / 1e3)
    app = create_app(store=JsonlStreamStore(args.data_dir, fsync=True), options=options)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", backlog=4096,
                timeout_graceful_shutdown=2)  # live readers must not hold SIGTERM up
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
