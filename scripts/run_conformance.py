#!/usr/bin/env python3
"""Runner for the official Durable Streams conformance suite.

This script owns the whole conformance run: it starts a server on a free
127.0.0.1 port with a fresh data directory (our `trio-streams serve`, or the
Node reference server from tests/conformance/reference_server.mjs), or uses an
already running one (--url); runs the pinned vitest suite in tests/conformance
against it; saves vitest's JSON report to build/conformance-<server>.json;
summarises it; and always stops the server (its whole process group).

Exit status 0 only if every test passed except failures allowed by
--allow-fail-prefix, the suite had all its tests, and the server did not die.
Once the suite has run, the last line printed is
`conformance: N passed, N failed, N skipped`.

  python3 scripts/run_conformance.py [--server ours|node | --url URL]
      [--auth] [--subscriptions] [--allow-fail-prefix "Fork - "]... [-t PATTERN]

With --auth our server starts with a config file holding one static token
(scopes read, write, delete, admin) and every request of the suite carries it
(tests/conformance/auth_fetch.setup.mjs wraps fetch); the runner first
checks that a request without the token is refused with 401.

With --subscriptions the suite's "Reserved subscription APIs" block runs
(`subscriptions: true`); our server then starts in webhook development mode
(TRIO_STREAMS_WEBHOOK_DEV_MODE=1), since the suite's webhook receiver listens
on http://localhost.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUITE_DIR = ROOT / "tests" / "conformance"
BUILD_DIR = ROOT / "build"
EXPECTED_TOTAL = 338
LONG_POLL_TIMEOUT_MS = 500
READY_TIMEOUT_S = 30.0
ANSI = re.compile(r"\x1b\[[0-9;]*m")


class RunError(Exception):
    """A problem that makes the run fail before or outside the test results."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--server", choices=("ours", "node"), default="ours",
                   help="which server to start (default: ours)")
    p.add_argument("--url", help="test an already running server instead")
    p.add_argument("--auth", action="store_true",
                   help="run our server with access control on, the suite sending a bearer token")
    p.add_argument("--subscriptions", action="store_true",
                   help="run the suite's subscription block too (webhooks to a local receiver)")
    p.add_argument("--allow-fail-prefix", action="append", default=[],
                   metavar="PREFIX", help="failures of tests whose full name "
                   "starts with PREFIX (a describe title) are allowed")
    p.add_argument("-t", "--filter", metavar="PATTERN",
                   help="vitest test-name pattern (runs matching tests only)")
    p.add_argument("--timeout", type=float, default=900.0,
                   help="seconds before the vitest run is aborted (default 900)")
    return p.parse_args(argv)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def auth_config(data_dir: str) -> tuple[str, str]:
    """A config file with one token allowed every operation; (its path, the token)."""
    token = secrets.token_urlsafe(32)
    path = Path(data_dir).parent / f"{Path(data_dir).name}-auth.toml"
    path.write_text(
        "[[auth.tokens]]\n"
        "name = \"conformance\"\n"
        f"sha256 = \"{hashlib.sha256(token.encode()).hexdigest()}\"\n"
        "scopes = [\"read\", \"write\", \"delete\", \"admin\"]\n")
    return str(path), token


def check_auth_is_on(base: str) -> None:
    status = request("PUT", f"{base}/v1/stream/__auth-check-{uuid.uuid4().hex}",
                     {"Content-Type": "text/plain"})
    if status != 401:
        raise RunError(f"--auth: a PUT without the token got {status}, not 401")


def server_command(kind: str, port: int, data_dir: str) -> list[str]:
    if kind == "ours":
        exe = ROOT / ".venv" / "bin" / "trio-streams"
        if not exe.exists():
            raise RunError(f"{exe} not found (run `make install`)")
        cmd = [str(exe), "serve"]
    else:
        if shutil.which("node") is None:
            raise RunError("node not found on PATH")
        cmd = ["node", str(SUITE_DIR / "reference_server.mjs")]
    return cmd + ["--host", "127.0.0.1", "--port", str(port),
                  "--data-dir", data_dir,
                  "--long-poll-timeout-ms", str(LONG_POLL_TIMEOUT_MS)]


def request(method: str, url: str, headers: dict | None = None) -> int:
    req = urllib.request.Request(url, method=method, headers=headers or {},
                                 data=b"" if method == "PUT" else None)
    try:
        with urllib.request.urlopen(req, timeout=2) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def probe(kind: str, base: str) -> bool:
    """One readiness check: /healthz for ours, a PUT + HEAD for node."""
    try:
        if kind == "ours":
            return request("GET", f"{base}/healthz") == 200
        url = f"{base}/v1/stream/__ready-{uuid.uuid4().hex}"
        if request("PUT", url, {"Content-Type": "text/plain"}) not in (200, 201):
            return False
        ok = request("HEAD", url) == 200
        request("DELETE", url)
        return ok
    except (OSError, urllib.error.URLError):
        return False


def log_tail(log_path: Path, lines: int = 40) -> str:
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return "(no server log)"
    return "\n".join(text.splitlines()[-lines:]) or "(server log is empty)"


def start_server(kind: str, data_dir: str, log_path: Path, extra: list[str], env: dict[str, str]):
    """Start the server in its own process group; return (proc, base URL)."""
    port = free_port()
    cmd = server_command(kind, port, data_dir) + extra
    print(f"starting {kind} server: {' '.join(cmd)}", flush=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, env=dict(os.environ, **env),
                                stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RunError(f"server exited with status {proc.returncode} "
                           f"before becoming ready; its output:\n"
                           f"{log_tail(log_path)}")
        if probe(kind, base):
            print(f"server ready at {base} (log: {log_path})", flush=True)
            return proc, base
        time.sleep(0.1)
    kill_group(proc)
    raise RunError(f"server not ready after {READY_TIMEOUT_S:.0f}s; its "
                   f"output:\n{log_tail(log_path)}")


def kill_group(proc: subprocess.Popen | None, grace: float = 5.0) -> None:
    """SIGTERM the process group of proc, then SIGKILL it after grace."""
    if proc is None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_vitest(base: str, report: Path, pattern: str | None,
               timeout: float, token: str | None = None, subscriptions: bool = False) -> int:
    vitest = SUITE_DIR / "node_modules" / ".bin" / "vitest"
    if not vitest.exists():
        raise RunError(f"{vitest} not found (run `make node-deps`)")
    report.unlink(missing_ok=True)
    cmd = [str(vitest), "run", "--reporter=dot", "--reporter=json",
           f"--outputFile.json={report}"]
    if pattern:
        cmd += ["-t", pattern]
    env = dict(os.environ, CONFORMANCE_TEST_URL=base)
    env.pop("CONFORMANCE_AUTH_TOKEN", None)
    env["CONFORMANCE_SUBSCRIPTIONS"] = "1" if subscriptions else "0"
    if token:
        env["CONFORMANCE_AUTH_TOKEN"] = token
    if not sys.stdout.isatty() and "FORCE_COLOR" not in env:
        env["NO_COLOR"] = "1"  # keep logs free of ANSI escapes
    print(f"running: {' '.join(cmd)}", flush=True)
    proc = subprocess.Popen(cmd, cwd=SUITE_DIR, env=env,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RunError(f"vitest did not finish within {timeout:.0f}s") from None
    finally:
        kill_group(proc)


def first_line(messages: list[str]) -> str:
    for message in messages:
        for line in ANSI.sub("", message).splitlines():
            if line.strip():
                return line.strip()
    return "(no failure message)"


def summarise(report: Path, allowed_prefixes: list[str]) -> dict:
    """Count results in vitest's JSON report and collect failing tests."""
    try:
        data = json.loads(report.read_text())
    except (OSError, ValueError) as e:
        raise RunError(f"no usable vitest JSON report at {report}: {e}") from None
    s = {"total": 0, "passed": 0, "skipped": 0, "failed": [], "allowed": [],
         "file_errors": []}
    for file_result in data.get("testResults", []):
        tests = file_result.get("assertionResults", [])
        if file_result.get("status") == "failed" and not any(
                t.get("status") == "failed" for t in tests):
            s["file_errors"].append(
                f"{file_result.get('name')}: "
                f"{first_line([file_result.get('message') or ''])}")
        for t in tests:
            s["total"] += 1
            status = t.get("status")
            if status == "passed":
                s["passed"] += 1
            elif status != "failed":  # pending / skipped / todo / disabled
                s["skipped"] += 1
            else:
                name = " > ".join(t.get("ancestorTitles", []) + [t["title"]])
                entry = (name, first_line(t.get("failureMessages", [])))
                allowed = any(name.startswith(p) for p in allowed_prefixes)
                s["allowed" if allowed else "failed"].append(entry)
    return s


def report_results(s: dict, prefixes: list[str]) -> list[str]:
    """Print failing tests; return the reasons the run failed, if any."""
    problems = [f"test file error: {e}" for e in s["file_errors"]]
    if s["failed"]:
        print(f"\nFAILED TESTS ({len(s['failed'])}):")
        for name, msg in s["failed"]:
            print(f"  {name}\n      {msg}")
        problems.append(f"{len(s['failed'])} test(s) failed")
    if s["allowed"]:
        print(f"\nALLOWED FAILURES ({len(s['allowed'])}, prefixes: "
              f"{', '.join(repr(p) for p in prefixes)}):")
        for name, msg in s["allowed"]:
            print(f"  {name}\n      {msg}")
    if s["total"] != EXPECTED_TOTAL:
        problems.append(f"the suite reported {s['total']} tests, expected "
                        f"{EXPECTED_TOTAL} (wrong suite version or a test "
                        f"file that failed to load?)")
    return problems


def conduct(args: argparse.Namespace, data_dir: str, procs: list) -> int:
    """Start the server if needed, run the suite, print the verdict."""
    name = ("url" if args.url else args.server) + ("-auth" if args.auth else "")
    BUILD_DIR.mkdir(exist_ok=True)
    report = BUILD_DIR / f"conformance-{name}.json"
    log_path = BUILD_DIR / f"conformance-{name}-server.log"
    token, extra = None, []
    if args.auth:
        if args.url or args.server != "ours":
            raise RunError("--auth starts our own server; it cannot be combined with --url or --server node")
        config, token = auth_config(data_dir)
        extra = ["--config", config]
    if args.url:
        base = args.url.rstrip("/")
    else:
        env = {"TRIO_STREAMS_WEBHOOK_DEV_MODE": "1"} if args.subscriptions and args.server == "ours" else {}
        server, base = start_server(args.server, data_dir, log_path, extra, env)
        procs.append(server)
    if args.auth:
        check_auth_is_on(base)
    rc = run_vitest(base, report, args.filter, args.timeout, token, args.subscriptions)
    s = summarise(report, args.allow_fail_prefix)
    problems = report_results(s, args.allow_fail_prefix)
    if rc != 0 and not (s["failed"] or s["allowed"] or s["file_errors"]):
        problems.append(f"vitest exited with status {rc} although no test "
                        f"failed (unhandled errors? see its output above)")
    if procs and procs[0].poll() is not None:
        problems.append(f"the server process died (status "
                        f"{procs[0].returncode}); last output:\n"
                        f"{log_tail(log_path)}")
    for problem in problems:
        print(f"FAIL: {problem}")
    n_failed = len(s["failed"]) + len(s["allowed"])
    print(f"\nreport: {report}")
    print(f"total: {s['total']} tests; allowed failures: {len(s['allowed'])}")
    print(f"conformance: {s['passed']} passed, {n_failed} failed, "
          f"{s['skipped']} skipped")
    return 1 if problems else 0


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C so the server is always stopped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    procs: list[subprocess.Popen] = []
    data_dir = tempfile.mkdtemp(prefix="conformance-data-")
    try:
        return conduct(args, data_dir, procs)
    except RunError as e:
        print(f"FAIL: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        for proc in procs:
            kill_group(proc)
        shutil.rmtree(data_dir, ignore_errors=True)
        Path(f"{data_dir}-auth.toml").unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
