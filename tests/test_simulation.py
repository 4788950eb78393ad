"""Deterministic simulation of the storage engine: actors, log and readers.

One seed drives everything: ``random.Random(seed)`` chooses the settings,
the workload (creates of byte and JSON streams, appends with and without an
idempotent producer, closes, deletes, forks, catch-up reads, long-poll
readers), the interleaving (seeded yields and short sleeps between
operations, and trio's own scheduler, made deterministic below), the fault
schedule at the file seam (``tests/simdisk.py``: ENOSPC episodes that clear,
short writes, failed checkpoint renames and unlinks, an fsync EIO in some
seeds) and crashes (at a chosen file call, with unsynced bytes dropped,
kept or torn). Every run is in-process under ``trio.testing.MockClock``
(autojump), so simulated minutes take milliseconds.

Determinism: worker threads would race the clock, so ``trio.to_thread.run_sync``
runs its function on the event loop after a seeded yield; trio's scheduler
shuffles each batch of runnable tasks with its module-level ``_r``, which we
seed, in the deterministic mode trio provides for Hypothesis; the service
gets a clock driven by the mock (``trio_driven_clock``: TTL, idle, expiry
sweeps, and the log's fsync and checkpoint intervals).
No workload stream has a TTL.

Invariants, checked as the run goes and after every restart:
* every acknowledged append is readable byte-exact at its acknowledged offset;
* a stream's content is a sequence of whole appends, each at most once
  (producer exactly-once), none of them refused; an append answered 503 or
  cut by a crash is in doubt and may be there, whole, or not at all;
* readers never see bytes change or appear out of order, never see a refused
  append, and (fsync=always) everything they saw survives any crash;
* no request is answered 500;
* after an acknowledged close, no later append with data is accepted.

``TRIO_STREAMS_SIM_SEED=N`` runs seed N alone; ``TRIO_STREAMS_SIM_SEEDS=K``
runs seeds 0..K-1 (default 6; ``make test-all`` runs 200). A failure prints
the seed and the trace.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from trio._core import _run as trio_run

from simdisk import CRASH_MODES, SimDisk
from trio_streams.config import Settings
from trio_streams.protocol.errors import ProtocolError
from trio_streams.protocol.headers import AppendRequest, CreateRequest, Expiry, ForkSpec, Producer
from trio_streams.protocol.jsonmode import encode_messages
from trio_streams.protocol.offsets import parse_offset
from trio_streams.protocol.rules import Reply
from trio_streams.service import Service
from trio_streams.clock import trio_driven_clock

BYTES = "application/octet-stream"
JSON = "application/json"
PATHS = ("s0", "s1", "s2", "s3")
FORKS = ("f0", "f1", "f2")
EPOCHS_MAX = 4
CLIENTS_MAX = 4
# Keeps each run small enough that `make test` runs a handful of seeds in seconds.
OPS_PER_EPOCH_MAX = 60
READERS_MAX = 4
# The UNIX time the mock clock's zero stands for (TTL and expiry read time.time()).
EPOCH_UNIX_S = 1_700_000_000.0
# A run longer than this in simulated time is stuck (the workload itself takes minutes at most).
SIMULATED_S_MAX = 3600.0
TOKEN = re.compile(rb'<(\d+)\||\{"op":(\d+),')


class InvariantBroken(AssertionError):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise InvariantBroken(message)


@dataclasses.dataclass
class Op:
    number: int
    kind: str
    path: str
    stored: bytes  # what the stream stores for it (framed, for JSON)
    status: str = "pending"  # acked, refused, in-doubt


@dataclasses.dataclass
class Incarnation:
    """One life of a stream at a path, as the model knows it."""

    content_type: str
    pieces: dict[int, bytes] = dataclasses.field(default_factory=dict)  # acked: offset → stored bytes
    closed: bool = False
    producer_seq: int = 0  # the next Producer-Seq to send
    producer_pending: Op | None = None  # a seq whose outcome is unknown: resent as is


class World:
    """The model, the trace and the workload's randomness for one seed."""

    def __init__(self, seed: int, root: Path) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.root = root
        self.trace: list[str] = []
        self.ops: dict[int, Op] = {}
        self.paths: dict[str, Incarnation | None] = {}
        self.uncertain: set[str] = set()  # paths whose existence an in-doubt op left open
        self.busy: dict[str, int] = {}
        self.exclusive: set[str] = set()
        self.producer_locks: dict[str, trio.Lock] = {}
        self.seen: dict[int, bytearray] = {}  # stream id → bytes readers have seen, from 0
        self.readers = 0
        self.disk = SimDisk(root / "data", random.Random(seed * 7919 + 1), self.note)
        self.service: Service | None = None

    def note(self, line: str) -> None:
        self.trace.append(f"{trio.current_time():10.4f} {line}")

    def new_op(self, kind: str, path: str, stored: bytes) -> Op:
        op = Op(len(self.ops) + 1, kind, path, stored)
        self.ops[op.number] = op
        return op

    def body(self, content_type: str, op_number: int) -> tuple[bytes, bytes]:
        """A unique body for op ``op_number`` and what a stream stores for it."""
        filler = "".join(self.rng.choice("abcdefgh") for _ in range(self.rng.randint(0, 40)))
        if content_type == BYTES:
            body = f"<{op_number}|{filler};".encode()
            return body, body
        messages = [{"op": op_number, "i": i, "p": filler} for i in range(self.rng.randint(1, 3))]
        body = json.dumps(messages if len(messages) > 1 or self.rng.random() < 0.5 else messages[0]).encode()
        return body, encode_messages(body, allow_empty=False)


def header(reply: Reply, name: str) -> str | None:
    return next((v for k, v in reply.headers if k == name), None)


def next_offset(reply: Reply) -> int:
    value = parse_offset(header(reply, "stream-next-offset") or "")
    assert isinstance(value, int)
    return value


# ---------------------------------------------------------------- content checks


def parse_appends(world: World, path: str, content: bytes) -> list[tuple[int, Op]]:
    """The content as whole appends: (offset, op). Fails on anything else."""
    found = []
    position = 0
    while position < len(content):
        match = TOKEN.match(content, position)
        check(match is not None, f"{path}: unparseable bytes at {position}: {content[position:position + 40]!r}")
        assert match is not None
        op = world.ops.get(int(match.group(1) or match.group(2)))
        check(op is not None, f"{path}: bytes of an op never made at {position}")
        assert op is not None
        check(content[position : position + len(op.stored)] == op.stored, f"{path}: op {op.number} torn or changed at {position}")
        check(op.status != "refused", f"{path}: refused op {op.number} ({op.kind}) is visible at {position}")
        found.append((position, op))
        position += len(op.stored)
    numbers = [op.number for _, op in found]
    check(len(numbers) == len(set(numbers)), f"{path}: an append appears twice (exactly-once broken): {numbers}")
    return found


async def current_content(world: World, path: str) -> tuple[int, bytes] | None:
    registry = world.service.registry  # type: ignore[union-attr]
    assert registry is not None
    state = registry.visible(path)
    if state is None or state.soft_deleted:
        return None
    return state.stream_id, await registry.view.read(state, 0, state.tail)


async def check_path(world: World, path: str) -> None:
    """The whole-content invariants of one path against the model."""
    found = await current_content(world, path)
    model = world.paths.get(path)
    if path in world.uncertain:
        return  # reconciled after the restart
    check((found is None) == (model is None), f"{path}: exists={found is not None}, the model says {model is not None}")
    if found is None or model is None:
        return
    stream_id, content = found
    parse_appends(world, path, content)
    for offset, stored in model.pieces.items():
        check(content[offset : offset + len(stored)] == stored, f"{path}: acknowledged bytes at {offset} missing or changed")
    seen = world.seen.get(stream_id, b"")
    check(content[: len(seen)] == seen, f"{path}: bytes a reader saw are gone or changed (stream {stream_id})")


# ---------------------------------------------------------------- the workload


def _outcome(world: World, op: Op, error: ProtocolError) -> None:
    check(error.status != 500, f"op {op.number} ({op.kind} {op.path}) answered 500: {error}")
    op.status = "in-doubt" if error.status == 503 or world.disk.crashed else "refused"
    world.note(f"op {op.number} {op.kind} {op.path}: {error.status} {error.code}")


async def settled(world: World, op: Op, request: Awaitable[Reply]) -> Reply | None:
    """A create or delete's reply if acknowledged; None if refused or in doubt
    (then whether the path exists is settled after the restart)."""
    # Open until answered: a crash cancels the request mid-way, after its record
    # may have reached the WAL, and this function then never gets further.
    world.uncertain.add(op.path)
    try:
        reply = await request
    except ProtocolError as error:
        _outcome(world, op, error)
        reply = None
    world.uncertain.discard(op.path)
    if world.disk.crashed:
        op.status = "in-doubt"
    if op.status == "in-doubt":
        world.uncertain.add(op.path)
        return None
    if reply is not None:
        op.status = "acked"
    return reply


async def do_create(world: World, path: str, fork_of: str | None = None) -> None:
    registry = world.service.registry  # type: ignore[union-attr]
    content_type = world.rng.choice((BYTES, JSON)) if fork_of is None else world.paths[fork_of].content_type  # type: ignore[union-attr]
    op = world.new_op("fork" if fork_of else "create", path, b"")
    body, stored = world.body(content_type, op.number) if world.rng.random() < 0.5 else (b"", b"")
    op.stored = stored
    fork = ForkSpec(fork_of, None, 0) if fork_of else None
    request = CreateRequest(content_type, Expiry(), False, body, fork, fork is None)
    reply = await settled(world, op, registry.create(path, request))  # type: ignore[union-attr]
    if reply is None:
        return
    tail = next_offset(reply)
    world.note(f"op {op.number} {op.kind} {path}{' from ' + fork_of if fork_of else ''}: {reply.status} tail {tail}")
    state = registry.visible(path)  # type: ignore[union-attr]
    assert state is not None
    incarnation = Incarnation(state.content_type)
    if fork_of is not None:
        source = world.paths.get(fork_of)
        prefix = tail - len(stored)
        if source is not None:
            incarnation.pieces = {o: b for o, b in source.pieces.items() if o + len(b) <= prefix}
    if stored:
        incarnation.pieces[tail - len(stored)] = stored
    if reply.status == 201:
        world.paths[path] = incarnation


async def do_append(world: World, path: str, *, producer: bool, close: bool) -> None:
    registry = world.service.registry  # type: ignore[union-attr]
    model = world.paths[path]
    assert model is not None
    closed_before = model.closed
    op = model.producer_pending if producer else None
    if op is None:  # else resend the same seq and body: exactly-once must hold
        op = world.new_op("append", path, b"")
        with_body = not close or world.rng.random() < 0.5
        op.body, op.stored = world.body(model.content_type, op.number) if with_body else (b"", b"")  # type: ignore[attr-defined]
        op.seq = model.producer_seq  # type: ignore[attr-defined]
        if producer:
            model.producer_seq += 1
            model.producer_pending = op
    who = Producer("p", 0, op.seq) if producer else None  # type: ignore[attr-defined]
    request = AppendRequest(model.content_type, op.body, None, who, close)  # type: ignore[attr-defined]
    try:
        reply = await registry.append(path, request)  # type: ignore[union-attr]
    except ProtocolError as error:
        _outcome(world, op, error)  # a producer's refused seq stays pending: it is resent
        return
    if world.disk.crashed:
        op.status = "in-doubt"
        return
    if producer:
        model.producer_pending = None
    # A producer's resent seq that was already stored (in doubt before) is answered 204.
    duplicate = producer and reply.status == 204 and bool(op.stored)
    op.status = "acked"
    tail = next_offset(reply)
    world.note(f"op {op.number} append{' producer' if producer else ''}{' close' if close else ''} {path}: "
               f"{reply.status} tail {tail}{' duplicate' if duplicate else ''}")
    check(not (closed_before and op.stored and not duplicate), f"op {op.number}: data accepted after an acknowledged close")
    if close:
        model.closed = True
    if op.stored and not duplicate:
        model.pieces[tail - len(op.stored)] = op.stored
        # Readable at once, byte-exact, at the acknowledged offset.
        found = await current_content(world, path)
        check(found is not None and found[1][tail - len(op.stored) : tail] == op.stored,
              f"op {op.number}: not readable at its acknowledged offset {tail - len(op.stored)}")


async def do_delete(world: World, path: str) -> None:
    registry = world.service.registry  # type: ignore[union-attr]
    op = world.new_op("delete", path, b"")
    reply = await settled(world, op, registry.delete(path))  # type: ignore[union-attr]
    if reply is None:
        return
    world.note(f"op {op.number} delete {path}: {reply.status}")
    world.paths[path] = None


async def do_catch_up_read(world: World, path: str) -> None:
    registry = world.service.registry  # type: ignore[union-attr]
    assert registry is not None
    state = registry.visible(path)
    if state is None or state.soft_deleted or state.tail == 0:
        return
    start = world.rng.randint(0, state.tail - 1)
    end = min(state.tail, start + world.rng.randint(1, 300))
    data = await registry.view.read(state, start, end)
    record_seen(world, path, state.stream_id, start, data)


def record_seen(world: World, path: str, stream_id: int, start: int, data: bytes) -> None:
    """Bytes at a position never change; the readers' view only grows from 0."""
    seen = world.seen.setdefault(stream_id, bytearray())
    overlap = seen[start : start + len(data)]
    check(data[: len(overlap)] == overlap, f"{path}: a reader saw bytes at {start} change")
    if start <= len(seen) < start + len(data):
        seen += data[len(seen) - start :]


async def long_poll_reader(world: World, path: str) -> None:
    """Reads from 0 to the end and then waits for more, as a long-poll client does."""
    registry = world.service.registry  # type: ignore[union-attr]
    assert registry is not None
    state = registry.visible(path)
    if state is None or state.soft_deleted:
        return
    stream_id, offset = state.stream_id, 0
    world.readers += 1
    try:
        while True:
            with registry.subscribe(stream_id) as wake:
                state = registry.view.by_id(stream_id)
                if state is None or state.soft_deleted:
                    return
                if state.tail > offset:
                    end = min(state.tail, offset + world.rng.randint(1, 400))
                    try:
                        data = await registry.view.read(state, offset, end)
                    except FileNotFoundError:
                        # Deleted while the read waited for its thread: the files go with it.
                        check(registry.view.by_id(stream_id) is None, f"{path}: a live stream's file is missing")
                        world.note(f"reader of {path}: stream deleted during a read")
                        return
                    record_seen(world, path, stream_id, offset, data)
                    offset = end
                    continue
                if state.closed:
                    return
                with trio.move_on_after(world.rng.choice((0.5, 5.0, 30.0))):
                    await wake.wait()
    finally:
        world.readers -= 1


async def client(world: World, nursery: trio.Nursery, operations: int) -> None:
    rng = world.rng
    for _ in range(operations):
        await interleave(world)
        if world.service.failure is not None:  # type: ignore[union-attr]
            return  # the server refuses every request while it drains
        kind = rng.choices(("create", "append", "producer", "close", "delete", "fork", "read", "reader"),
                           (3, 14, 5, 1, 1, 2, 3, 1))[0]
        path = rng.choice(FORKS if kind == "fork" else PATHS)
        exists = world.paths.get(path) is not None
        if path in world.uncertain or path in world.exclusive:
            continue
        if kind in ("create", "fork", "delete"):
            if world.busy.get(path) or (kind == "delete") != exists:
                continue
            source = rng.choice(PATHS)
            if kind == "fork" and (world.paths.get(source) is None or source in world.uncertain):
                continue
            world.exclusive.add(path)
            try:
                if kind == "delete":
                    await do_delete(world, path)
                else:
                    await do_create(world, path, source if kind == "fork" else None)
            finally:
                world.exclusive.discard(path)
            continue
        if not exists:
            continue
        if kind == "reader":
            if world.readers < READERS_MAX:
                nursery.start_soon(long_poll_reader, world, path)
            continue
        world.busy[path] = world.busy.get(path, 0) + 1
        try:
            if kind == "read":
                await do_catch_up_read(world, path)
            elif kind == "producer":
                async with world.producer_locks.setdefault(path, trio.Lock()):
                    if world.paths.get(path) is not None:
                        await do_append(world, path, producer=True, close=False)
            else:
                await do_append(world, path, producer=False, close=kind == "close")
        finally:
            world.busy[path] -= 1


async def interleave(world: World) -> None:
    """Seeded yields and short sleeps between operations."""
    choice = world.rng.random()
    if choice < 0.4:
        await trio.lowlevel.checkpoint()
    elif choice < 0.8:
        await trio.sleep(world.rng.choice((0.0001, 0.001, 0.01)))
    else:
        await trio.sleep(world.rng.choice((0.1, 1.0)))


async def disk_chaos(world: World) -> None:
    """ENOSPC episodes that begin and, later, clear by themselves."""
    rng = world.rng
    while True:
        await trio.sleep(rng.uniform(0.05, 2.0))
        if rng.random() < 0.3:
            world.disk.full = True
            world.note("disk full")
            await trio.sleep(rng.uniform(0.01, 1.0))
            world.disk.full = False
            world.note("disk space freed")


# ---------------------------------------------------------------- one run


def settings_for(world: World) -> Settings:
    rng = world.rng
    return Settings(
        data_dir=str(world.root / "data"),
        fsync="always",
        wal_segment_bytes_max=rng.choice((4096, 16384, 1 << 20)),
        checkpoint_wal_bytes=rng.choice((2048, 8192, 1 << 20)),
        checkpoint_interval_s=rng.choice((1.0, 300.0)),
        checkpoint_retry_interval_s=rng.choice((0.0, 0.5)),
        actor_idle_s=rng.choice((0.05, 1.0, 30.0)),
        open_stream_files_max=rng.choice((2, 256)),
        hot_tail_bytes_max=rng.choice((0, 64, 256 * 1024)),
        actor_batch_max=rng.choice((1, 4, 64)),
        storage_failure="exit",
        # Small slices and writes spread a checkpoint over many scheduling
        # points, so batches commit (and crashes land) while it is written.
        checkpoint_slice_streams=rng.choice((1, 2, 1000)),
        checkpoint_write_bytes=rng.choice((1, 64, 1 << 20)),
    )


async def epoch(world: World, number: int, last: bool) -> None:
    rng, disk = world.rng, world.disk
    disk.armed = False
    disk.short_write_p = rng.choice((0.0, 0.02, 0.1))
    disk.checkpoint_fail_p = rng.choice((0.0, 0.3))
    disk.unlink_fail_p = rng.choice((0.0, 0.1))
    disk.crash_mode = rng.choice(CRASH_MODES)
    ending = "stop" if last else rng.choice(("stop", "crash", "crash", "fsync-eio"))
    disk.crash_at = rng.randint(20, 400) if ending == "crash" else None
    disk.fsync_eio_at = rng.randint(20, 400) if ending == "fsync-eio" else None
    service = world.service = Service(settings_for(world), disk, clock=SIM_CLOCK)
    world.note(f"epoch {number}: ending {ending}, crash mode {disk.crash_mode}")
    async with trio.open_nursery() as outer:
        outer.start_soon(service.run)
        await service.ready.wait()
        await reconcile(world)
        disk.armed = True
        with trio.CancelScope() as scope:
            disk.on_crash = scope.cancel
            async with trio.open_nursery() as nursery:
                nursery.start_soon(disk_chaos, world)
                clients = [rng.randint(1, OPS_PER_EPOCH_MAX // 2) for _ in range(rng.randint(1, CLIENTS_MAX))]
                async with trio.open_nursery() as workers:
                    for operations in clients:
                        workers.start_soon(client, world, nursery, operations)
                if ending == "crash":
                    disk.crash("at the end of the workload")
                await check_all(world, "epoch end")
                nursery.cancel_scope.cancel()
        disk.armed = False
        disk.full = False
        if service.failure is not None or (service._log is not None and service._log.failed is not None):
            disk.crash("the service failed")  # the process exits; its last fsync failed
        if disk.crashed:
            outer.cancel_scope.cancel()  # the process dies: no clean shutdown
        else:
            service.stop()
    if disk.crashed:
        disk.restore()
        disk.image = None
    world.note(f"epoch {number} over: {sum(1 for op in world.ops.values() if op.status == 'acked')} acked so far")


async def check_all(world: World, when: str) -> None:
    if world.disk.crashed:
        return
    for path in (*PATHS, *FORKS):
        await check_path(world, path)
    world.note(f"checked ({when})")


async def reconcile(world: World) -> None:
    """After a restart: settle what in-doubt operations left open, then check everything."""
    for path in sorted(world.uncertain):
        found = await current_content(world, path)
        model = world.paths.get(path)
        if found is None:
            world.paths[path] = None
        elif model is None:
            registry = world.service.registry  # type: ignore[union-attr]
            world.paths[path] = Incarnation(registry.visible(path).content_type)  # type: ignore[union-attr]
        world.note(f"in doubt {path}: exists={found is not None}")
    world.uncertain.clear()
    for model in world.paths.values():
        if model is not None and model.producer_pending is not None:
            model.producer_pending.status = "in-doubt"
    for op in world.ops.values():
        if op.status == "pending":
            op.status = "in-doubt"
    await check_all(world, "after recovery")


async def watchdog(world: World) -> None:
    """A run that makes no end within its simulated time is stuck: say where every task is."""
    await trio.sleep(SIMULATED_S_MAX)
    for line in task_tree(trio.lowlevel.current_root_task()):
        world.note(line)
    raise InvariantBroken(f"the run is stuck: not over after {SIMULATED_S_MAX} simulated seconds")


def task_tree(task: trio.lowlevel.Task, depth: int = 0) -> list[str]:
    frames = []
    coroutine: Any = task.coro
    while coroutine is not None and getattr(coroutine, "cr_frame", None) is not None:
        frame = coroutine.cr_frame
        frames.append(f"{frame.f_code.co_name}:{frame.f_lineno}")
        coroutine = coroutine.cr_await
    lines = ["  " * depth + f"{task.name}: {' > '.join(frames)}"]
    for nursery in task.child_nurseries:
        for child in nursery.child_tasks:
            lines += task_tree(child, depth + 1)
    return lines


# The service reads every time through its injected clock.
SIM_CLOCK = trio_driven_clock(EPOCH_UNIX_S)


def simulate(seed: int, root: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    world = World(seed, root)
    clock = trio.testing.MockClock(autojump_threshold=0)

    async def run_sync_on_loop(function: Callable[..., Any], *args: Any, **_: Any) -> Any:
        await interleave(world) if world.rng.random() < 0.3 else await trio.lowlevel.checkpoint()
        return function(*args)

    with monkeypatch.context() as patch:
        patch.setattr(trio.to_thread, "run_sync", run_sync_on_loop)
        patch.setattr(trio_run, "_ALLOW_DETERMINISTIC_SCHEDULING", True)
        trio_run._r.seed(seed)

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watchdog, world)
                await run_epochs()
                nursery.cancel_scope.cancel()

        async def run_epochs() -> None:
            epochs = world.rng.randint(1, EPOCHS_MAX)
            for number in range(epochs):
                await epoch(world, number, number == epochs - 1)
            world.note("final check")
            world.disk.armed = False
            world.service = Service(settings_for(world), world.disk, clock=SIM_CLOCK)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(world.service.run)
                await world.service.ready.wait()
                await reconcile(world)
                world.service.stop()

        try:
            trio.run(main, clock=clock)
        except BaseException:
            print(f"simulation seed {seed} failed; reproduce with TRIO_STREAMS_SIM_SEED={seed}; trace:")
            print("\n".join(world.trace))
            raise
    return world.trace


def seeds() -> list[int]:
    if "TRIO_STREAMS_SIM_SEED" in os.environ:
        return [int(os.environ["TRIO_STREAMS_SIM_SEED"])]
    return list(range(int(os.environ.get("TRIO_STREAMS_SIM_SEEDS", "6"))))


@pytest.mark.parametrize("seed", seeds())
def test_simulation(seed: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trace = simulate(seed, tmp_path, monkeypatch)
    assert any("checked (after recovery)" in line for line in trace)


def test_a_seed_replays_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = simulate(3, tmp_path / "first", monkeypatch)
    second = simulate(3, tmp_path / "second", monkeypatch)
    assert len(first) > 20
    assert first == second
