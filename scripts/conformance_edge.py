#!/usr/bin/env python3
"""The official conformance suite through the nginx edge (deploy/nginx/edge.conf).

Starts our server on a free port (the suite's settings: 500 ms long-polls,
webhook development mode), nginx in front of it with the shipped edge
configuration (only its cache directory, ports and snippet path replaced,
and the per-client write rate raised: the suite is one client doing the
writes of many), and runs scripts/run_conformance.py --url against nginx.
Exit status: the runner's.

  python3 scripts/conformance_edge.py [--subscriptions] [-t PATTERN]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))

from nginxproc import edge_http, install_nginx, main_config, running, start_origin  # noqa: E402
from run_conformance import LONG_POLL_TIMEOUT_MS  # noqa: E402
from serverproc import free_port  # noqa: E402

# The suite writes from one address far faster than one client of a real edge would.
SUITE_WRITES_PER_S = 100_000


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subscriptions", action="store_true", help="run the suite's subscription block too")
    p.add_argument("-t", "--filter", metavar="PATTERN", help="vitest test-name pattern")
    args = p.parse_args(argv)
    nginx = install_nginx()
    with tempfile.TemporaryDirectory(prefix="conformance-edge-") as tmp:
        root = Path(tmp)
        env = {"TRIO_STREAMS_WEBHOOK_DEV_MODE": "1"} if args.subscriptions else {}
        origin, port = start_origin(root, ["--long-poll-timeout-ms", str(LONG_POLL_TIMEOUT_MS)], env)
        try:
            edge_port = free_port()
            conf = main_config(root, edge_http(root, port, edge_port, write_rate_per_s=SUITE_WRITES_PER_S),
                               worker_connections=4096)
            with running(nginx, conf, root, f"http://127.0.0.1:{edge_port}") as url:
                command = [sys.executable, str(ROOT / "scripts" / "run_conformance.py"), "--url", url]
                command += ["--subscriptions"] if args.subscriptions else []
                command += ["-t", args.filter] if args.filter else []
                return subprocess.run(command, cwd=ROOT).returncode
        finally:
            origin.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
