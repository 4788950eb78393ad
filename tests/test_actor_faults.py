"""A bug triggered by one command fails that command (500 INTERNAL), not its actor.

Faults are injected in-process: a rules function that raises for one marker
body, and a log submission that raises something other than StorageFailed.
Commands are queued before the actor starts, so they form one batch.
"""

from __future__ import annotations

import dataclasses

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from trio_streams.config import Settings
from trio_streams.protocol.headers import AppendRequest, CreateRequest, Expiry
from trio_streams.service import Service
from trio_streams.streams import actor as actor_module
from trio_streams.streams.actor import Command, StreamActor
from trio_streams.streams.registry import Registry

from test_streams import run_service

MARKER = b"boom"


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[Registry]:
    async with run_service(Settings(data_dir=str(tmp_path), actor_idle_s=60.0)) as service:
        assert service.registry is not None
        await service.registry.create("s", CreateRequest("text/plain", Expiry(), False, b""))
        yield service.registry


def _append(body: bytes) -> AppendRequest:
    return AppendRequest("text/plain", body, None, None, False)


async def _one_batch(actor: StreamActor, bodies: list[bytes]) -> list[Command]:
    commands = [Command(_append(body)) for body in bodies]
    for command in commands:
        actor.send_channel.send_nowait(command)
    for command in commands:
        await command.done.wait()
    assert actor.statistics().batches == 1
    return commands


def _tail(command: Command) -> str:
    assert command.error is None and command.reply is not None, command.error
    return dict(command.reply.headers)["stream-next-offset"]


async def _stored(registry: Registry) -> bytes:
    state = registry.visible("s")
    assert state is not None
    return await registry.view.read(state, 0, state.tail)


async def test_a_failure_deciding_one_command_fails_only_that_command(
    registry: Registry, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = actor_module.decide_append

    def decide_append(state, request):  # type: ignore[no-untyped-def]
        if request.body == MARKER:
            raise RuntimeError("injected fault")
        return real(state, request)

    monkeypatch.setattr(actor_module, "decide_append", decide_append)
    actor = StreamActor(registry.context, "s")
    with caplog.at_level(logging.ERROR, logger="trio_streams.actor"):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(actor.run)
            first, boom, last = await _one_batch(actor, [b"a", MARKER, b"c"])
            assert _tail(first).endswith("_0000000000000001") and _tail(last).endswith("_0000000000000002")
            assert boom.error is not None and (boom.error.status, boom.error.code) == (500, "INTERNAL")
            later = Command(_append(b"d"))
            await actor.send_channel.send(later)  # the same actor task is still serving
            assert (await later.wait()).status == 204
            nursery.cancel_scope.cancel()
    assert await _stored(registry) == b"acd"
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "'s'" in record.getMessage() and record.exc_info is not None
    assert "injected fault" in str(record.exc_info[1])


async def test_an_unexpected_submit_failure_fails_the_batch_not_the_actor(
    registry: Registry, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = registry.context.submit
    failures = [RuntimeError("injected submit fault")]

    async def submit(events):  # type: ignore[no-untyped-def]
        if failures:
            raise failures.pop()
        await real(events)

    actor = StreamActor(dataclasses.replace(registry.context, submit=submit), "s")
    with caplog.at_level(logging.ERROR, logger="trio_streams.actor"):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(actor.run)
            for command in await _one_batch(actor, [b"a", b"b"]):
                assert command.error is not None and command.error.status == 500
            later = Command(_append(b"c"))
            await actor.send_channel.send(later)
            await later.wait()
            assert _tail(later).endswith("_0000000000000001")
            nursery.cancel_scope.cancel()
    assert await _stored(registry) == b"c"
    assert any(r.levelno == logging.ERROR and r.exc_info for r in caplog.records)


async def test_a_bug_outside_deciding_still_answers_every_command(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    def at(path: str) -> None:
        raise RuntimeError("injected bug")

    actor = StreamActor(registry.context, "s")
    monkeypatch.setattr(registry.view, "at", at)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(actor.run)
        for command in await _one_batch(actor, [b"a", b"b"]):
            assert command.error is not None and command.error.code == "INTERNAL"
        monkeypatch.undo()
        later = Command(_append(b"c"))
        await actor.send_channel.send(later)
        assert (await later.wait()).status == 204
        nursery.cancel_scope.cancel()
