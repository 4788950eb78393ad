"""The log writer torn down by cancellation answers what is still queued.

Submitters wait for their answer shielded (an actor's answers must match
what became durable), so a submission left in the queue when the writer
is cancelled would keep its actor — and the service's shutdown — waiting
forever (found by simulation seed 136 after the checksum merge).
"""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from trio_streams.config import Settings
from trio_streams.protocol.headers import Expiry
from trio_streams.protocol.state import Created
from trio_streams.storage.log import Log, StorageFailed
from trio_streams.storage.recovery import recover
from trio_streams.storage.store import Store


async def test_a_submission_queued_when_the_writer_is_cancelled_is_refused(tmp_path: Path) -> None:
    settings = Settings(data_dir=str(tmp_path), fsync="always")
    store = Store(tmp_path / "streams", open_files_max=8, hot_tail_bytes_max=0, corrupt_ranges_logged_max=10)
    recovered = recover(tmp_path, store, settings)
    log = Log(settings, tmp_path, recovered.wal, store, recovered.table)
    answers: list[BaseException | None] = []
    shield = trio.CancelScope(shield=True)  # as an actor waits; lifted at the end so a failure cannot hang

    async def submit() -> None:
        with shield:
            try:
                await log.submit([Created(1, "/s", "text/plain", Expiry(None, None, None), 0.0, False, b"x")])
                answers.append(None)
            except StorageFailed as error:
                answers.append(error)

    async with trio.open_nursery() as submitters:
        async with trio.open_nursery() as writer:
            writer.start_soon(log.run)
            await trio.testing.wait_all_tasks_blocked()  # the writer waits for a batch
            writer.cancel_scope.cancel()  # its wait is aborted before the submission arrives
            submitters.start_soon(submit)
        await trio.testing.wait_all_tasks_blocked()
        shield.shield = False
        submitters.cancel_scope.cancel()
    assert len(answers) == 1 and isinstance(answers[0], StorageFailed)
    store.close_sync()
    recovered.wal.close()
