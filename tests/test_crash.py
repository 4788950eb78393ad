"""Crash test: kill -9 the server mid-load, restart on the same data dir, check.

Every acknowledged append must be present byte-exact at its acknowledged
offset, nothing but whole in-flight appends may appear beyond what was
acknowledged, and writing (including idempotent producers) must continue.
The harness is tests/crashlib.py; scripts/crash_test.py runs it standalone.

A SIGKILL loses the process, not the OS page cache, so even with
``--fsync interval`` or ``never`` no acknowledged append may be missing.

The seed (printed; see it with ``-s``) fixes load durations, producer epoch
bumps and sampled offset checks; set CRASH_SEED to reuse one. Thread timing,
and so where exactly the kill lands, is never reproducible.
"""

from __future__ import annotations

import os
import random

import pytest

import crashlib
from crashlib import ServerConfig

# Small WAL segments and checkpoint thresholds make the kill land across
# segment rotations and checkpoints too, not only plain appends.
SMALL_LOG = (("WAL_SEGMENT_BYTES_MAX", str(256 * 1024)), ("CHECKPOINT_WAL_BYTES", str(1024 * 1024)))


def _seed() -> int:
    return int(os.environ.get("CRASH_SEED") or random.SystemRandom().randrange(2**32))


def _run(tmp_path, configs) -> None:
    summary = crashlib.run_crash_test(tmp_path, configs, seed=_seed())
    assert summary.acked_checked > 0, "no acknowledged appends were checked"
    for result in summary.rounds:
        assert result.inflight_at_kill > 0, f"the kill did not land mid-load: {result.describe()}"
    assert summary.lost == 0, summary.line() + "\n" + "\n".join(summary.problems[:30])
    assert not summary.problems, "\n".join(summary.problems[:30])
    assert len(summary.rounds) == len(configs)


def test_crash_once(tmp_path) -> None:
    """One round with fsync=always (part of `make test`)."""
    _run(tmp_path, [ServerConfig("always", SMALL_LOG)])


@pytest.mark.slow
def test_crash_repeated(tmp_path) -> None:
    """Six kill -9 rounds on one data dir, every fsync mode, with and without
    small segments/checkpoints; each round restarts under the next mode."""
    _run(tmp_path, [
        ServerConfig("always"),
        ServerConfig("interval", SMALL_LOG),
        ServerConfig("never"),
        ServerConfig("always", SMALL_LOG),
        ServerConfig("interval"),
        ServerConfig("never", SMALL_LOG),
    ])


@pytest.mark.slow
def test_checker_detects_lost_appends(tmp_path) -> None:
    """Self-test of the harness: cut the end off the WAL between the kill and
    the restart (no checkpoints, so the WAL is the only copy); the checker
    must report acknowledged appends as lost."""

    def cut_wal(data_dir) -> None:
        segments = sorted((data_dir / "wal").glob("*.wal"))
        assert segments, "no WAL segment to damage"
        last = segments[-1]
        size = last.stat().st_size
        assert size > 0
        os.truncate(last, size // 2)

    def quiet(line: str) -> None:  # the expected LOST lines would drown the output
        if not line.startswith("  PROBLEM"):
            print(line)

    summary = crashlib.run_crash_test(tmp_path, [ServerConfig("always")], seed=_seed(), after_kill=cut_wal, out=quiet)
    assert summary.lost > 0, summary.line()
    assert any("LOST" in problem for problem in summary.problems)
