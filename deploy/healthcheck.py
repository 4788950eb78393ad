"""The container's health check: exit 0 when the server's liveness endpoint answers 200.

The slim image has no curl; the standard library is enough. It asks
``/healthz/live`` (is the process serving at all; a long recovery is still
alive) on the loopback address and the port the image configures
(``TRIO_STREAMS_PORT``), and falls back to ``/healthz`` on a server that
predates the split, where recovery counts as unhealthy (the image's
start period covers a normal one).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

PATHS = ("/healthz/live", "/healthz")
TIMEOUT_S = 4.0


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def main() -> int:
    base = f"http://127.0.0.1:{os.environ.get('TRIO_STREAMS_PORT', '4437')}"
    try:
        for path in PATHS:
            answer = status(base + path)
            if answer != 404:
                return 0 if answer == 200 else 1
    except OSError as error:  # refused, timed out: not serving
        print(f"healthcheck: {error}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
