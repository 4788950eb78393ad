"""The servers under test, started side by side, each on a fresh data directory.

ours       trio-streams serve, --fsync always (more modes with --fsync)
node-file  the Node reference server 0.3.7, file-backed store (durable like ours)
node-mem   the same without --data-dir: its in-memory store (not durable)
floor      floor_app.py: Hypercorn-Trio with canned answers, no storage
rakaia     rakaia-streams 0.9.0 under uvicorn, JsonlStreamStore(dir, fsync=True),
           installed into its own venv under build/; skipped with a note
           when it cannot be installed or started
"""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from scripts.serverproc import ManagedProcess, free_port, proc_memory, raise_nofile_limit

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build"
OURS_EXE = ROOT / ".venv" / "bin" / "trio-streams"
NODE_SERVER = ROOT / "tests" / "conformance" / "reference_server.mjs"
NODE_PACKAGE = ROOT / "tests" / "conformance" / "node_modules" / "@durable-streams" / "server"
RAKAIA_VENV = BUILD / "rakaia-venv"
RAKAIA_PINS = ("rakaia-streams==0.9.0", "uvicorn==0.34.3")
RAKAIA_INSTALL_TIMEOUT_S = 300.0
READY_TIMEOUT_S = 30.0
# Long enough that 1,000 long-polls stay parked while a slow server parks the
# last of them; the fan-out scenarios never wait that long for an event.
LONG_POLL_TIMEOUT_MS = 10_000
# Ours refuses connections above connections_max (default 1000) with 503,
# and refuses to start when the open-file limit cannot hold that many plus
# its stream files: the bench sets it to the hard limit less this margin
# (the idle-SSE scenario holds 10,000 connections at once).
OURS_FD_MARGIN = 1024
SERVER_KINDS = ("ours", "node-file", "node-mem", "floor", "rakaia")

DURABILITY = {
    "ours-always": "204 only after the batch's WAL records are fdatasync'd (group commit: one fdatasync covers "
                   "every append that arrived together); stream files are synced at checkpoints",
    "ours-interval": "204 after write(2) to the WAL; fdatasync at most 5 ms later (an OS crash can lose the last "
                     "~5 ms of acknowledged appends, a process crash cannot)",
    "ours-never": "204 after write(2) to the WAL; fsync only at checkpoints and shutdown (an OS crash can lose "
                  "acknowledged appends, a process crash cannot)",
    "node-file": "@durable-streams/server 0.3.7, file-backed: 204 after write + fdatasync of the stream's log "
                 "file, one per append (per-stream lock, no group commit), then an awaited LMDB metadata commit",
    "node-mem": "@durable-streams/server 0.3.7, in-memory store: nothing survives a restart",
    "floor": "stores nothing: canned answers from a trivial Hypercorn-Trio app (the HTTP stack's floor)",
    "rakaia": "rakaia-streams 0.9.0, JsonlStreamStore(fsync=True): an append returns after its JSONL segment "
              "is fsynced; uvicorn, one worker",
}


@dataclass
class Server:
    label: str
    kind: str  # one of SERVER_KINDS
    command: list[str]
    ready: Callable[[], bool]
    durability: str
    port: int
    data_dir: Path | None
    process: ManagedProcess | None = None
    rss_samples: list[dict[str, object]] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def stores(self) -> bool:
        """Whether reads return what was appended (the floor answers canned bytes)."""
        return self.kind != "floor"

    def start(self, workdir: Path) -> None:
        self.process = ManagedProcess(self.command, workdir / f"{self.label}.log", cwd=ROOT)
        self.process.start()

    def memory(self) -> dict[str, float]:
        return proc_memory(self.pid)


def http_answers(port: int, path: str = "/healthz", want: int | None = None) -> Callable[[], bool]:
    """Ready when the port answers HTTP (with status ``want``, if given)."""
    def check() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                return want is None or r.status == want
        except urllib.error.HTTPError as exc:
            return want is None or exc.code == want
        except OSError:
            return False
    return check


def ours(fsync: str, workdir: Path) -> Server:
    port, data = free_port(), workdir / f"ours-{fsync}"
    command = [str(OURS_EXE), "serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data),
               "--long-poll-timeout-ms", str(LONG_POLL_TIMEOUT_MS), "--fsync", fsync, "--log-level", "warning",
               "--connections-max", str(raise_nofile_limit() - OURS_FD_MARGIN)]
    label = "ours" if fsync == "always" else f"ours-{fsync}"
    return Server(label, "ours", command, http_answers(port, want=200), DURABILITY[f"ours-{fsync}"], port, data)


def node(kind: str, workdir: Path) -> Server:
    port = free_port()
    command = ["node", str(NODE_SERVER), "--host", "127.0.0.1", "--port", str(port),
               "--long-poll-timeout-ms", str(LONG_POLL_TIMEOUT_MS)]
    data = workdir / kind if kind == "node-file" else None
    if data is not None:
        command += ["--data-dir", str(data)]
    return Server(kind, kind, command, http_answers(port), DURABILITY[kind], port, data)


def floor(workdir: Path) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "scripts.bench.floor_app", "--port", str(port),
               "--long-poll-timeout-ms", str(LONG_POLL_TIMEOUT_MS)]
    return Server("floor", "floor", command, http_answers(port), DURABILITY["floor"], port, None)


def rakaia(workdir: Path) -> Server:
    port, data = free_port(), workdir / "rakaia"
    command = [str(RAKAIA_VENV / "bin" / "python"), str(ROOT / "scripts" / "bench" / "rakaia_app.py"),
               "--port", str(port), "--data-dir", str(data), "--long-poll-timeout-ms", str(LONG_POLL_TIMEOUT_MS)]
    return Server("rakaia", "rakaia", command, http_answers(port), DURABILITY["rakaia"], port, data)


def install_rakaia() -> str | None:
    """Installs the pinned rakaia-streams into its own venv; None, or why it could not."""
    marker = RAKAIA_VENV / (".installed-" + "-".join(RAKAIA_PINS))
    if marker.exists():
        return None
    steps = [[sys.executable, "-m", "venv", "--clear", str(RAKAIA_VENV)],
             [str(RAKAIA_VENV / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", *RAKAIA_PINS]]
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=RAKAIA_INSTALL_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{' '.join(step[:3])}: {exc}"
        if done.returncode != 0:
            return f"{' '.join(step[:3])} failed: {done.stderr.strip().splitlines()[-1:] or done.returncode}"
    marker.touch()
    return None


def missing(kind: str) -> str | None:
    """Why a server kind cannot run here, or None."""
    if kind == "ours" and not OURS_EXE.exists():
        return f"{OURS_EXE} not found (run `make install`)"
    if kind.startswith("node") and not NODE_PACKAGE.exists():
        return "tests/conformance/node_modules missing (run `make node-deps`)"
    if kind == "rakaia":
        return install_rakaia()
    return None


def build(kinds: list[str], fsync_modes: list[str], workdir: Path) -> tuple[list[Server], list[str]]:
    """The servers to run, and notes on those skipped."""
    servers: list[Server] = []
    skipped: list[str] = []
    for kind in kinds:
        why = missing(kind)
        if why is not None:
            skipped.append(f"{kind} skipped: {why}")
        elif kind == "ours":
            servers += [ours(mode, workdir) for mode in fsync_modes]
        elif kind.startswith("node"):
            servers.append(node(kind, workdir))
        else:
            servers.append(floor(workdir) if kind == "floor" else rakaia(workdir))
    return servers, skipped


def start_all(servers: list[Server], workdir: Path) -> tuple[list[Server], list[str]]:
    """Starts every server at once, then waits for each; the ones running, and notes on failures.

    A server that fails to start is skipped, except ours: without it the run means nothing.
    """
    for s in servers:
        s.start(workdir)
    running, notes = [], []
    for s in servers:
        assert s.process is not None
        try:
            s.process.wait_ready(s.ready, READY_TIMEOUT_S)
        except RuntimeError as exc:
            if s.kind == "ours":
                raise RuntimeError(f"{s.label} {exc}") from None
            s.process.stop()
            notes.append(f"{s.label} skipped: it did not start: {str(exc).splitlines()[0]}")
            continue
        s.rss_samples.append({"after": "start", **s.memory()})
        running.append(s)
    return running, notes
