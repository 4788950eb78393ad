"""The blocking client (trio_streams.client.sync) against our server and the Node reference server.

Plain (non-async) tests: the sync client runs no event loop of its own
except the producer's background thread. Live reads are fed by a writer
thread. Every test runs against both servers (``target``).
"""

from __future__ import annotations

import io
import threading
from typing import Any

import httpx
import pytest

from client_harness import Target, node_server, target  # noqa: F401 (fixtures)
import trio_streams.client.sync as sync_module
from trio_streams.client.sync import (
    DurableStream, DurableStreamError, IdempotentProducer, StaleEpochError, StreamClosedError, stream,
)


class LoseResponses(httpx.BaseTransport):
    """Forwards to the real server, then 'loses' the answer to chosen producer seqs (once each)."""

    def __init__(self, seqs: set[str]) -> None:
        self.inner = httpx.HTTPTransport()
        self.seqs = set(seqs)
        self.lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        with self.lock:
            lose = request.headers.get("producer-seq") in self.seqs
            self.seqs.discard(request.headers.get("producer-seq", ""))
        if lose:
            response.read()
            response.close()
            raise httpx.ReadError("response lost on the way back")
        return response

    def close(self) -> None:
        self.inner.close()


def test_the_docs_sync_example_runs_as_written(target: Target) -> None:
    url = target.url("docs")
    with DurableStream.create(url, content_type="text/plain", body="hello ") as writer:
        writer.append("world")
    stream = DurableStream(url=url)
    text = stream.read(live=False)
    assert text == "hello world"
    stream.release()


def test_write_read_head_close_delete(target: Target) -> None:
    with DurableStream.create(target.url(), content_type="application/json", body=[0]) as ds:
        assert ds.append({"n": 1}) == ds.head().offset
        ds.append([2, "two"])
        assert ds.read_json() == [0, {"n": 1}, [2, "two"]]
        first = ds.stream()
        assert first.json()[:1] == [0] and first.up_to_date
        result = ds.close({"done": True})
        head = ds.head()
        assert head.closed and head.offset == result.final_offset
        with pytest.raises(StreamClosedError):
            ds.append("late")
        res = stream(ds.url, offset=first.offset)
        assert res.json() == [{"done": True}] and res.closed
        ds.delete()
        with pytest.raises(DurableStreamError) as info:
            ds.head()
        assert info.value.code in ("NOT_FOUND", "GONE")
    with pytest.raises(DurableStreamError) as info:
        DurableStream.connect(target.url("missing"))
    assert info.value.code == "NOT_FOUND"


def test_append_stream_from_a_file_and_an_iterable(target: Target, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sync_module, "UPLOAD_CHUNK_BYTES", 1000)
    payload = bytes(range(256)) * 40  # ten upload chunks, one POST
    with DurableStream.create(target.url(), content_type="application/octet-stream") as ds:
        ds.append_stream(io.BytesIO(payload))
        ds.append_stream(iter([b"a", "b", b""]))
        assert ds.read_bytes() == payload + b"ab"


@pytest.mark.parametrize("live", ["long-poll", "sse", True])
def test_live_iteration_follows_a_writer_thread_until_eof(target: Target, live: Any) -> None:
    with DurableStream.create(target.url(), content_type="application/json", body=[0]) as ds:
        res = stream(ds.url, live=live)
        started = threading.Event()

        def writer() -> None:
            started.wait(10)
            with DurableStream(ds.url, content_type="application/json") as w:
                w.append(1)
                w.append({"two": 2})
                w.close(3)

        thread = threading.Thread(target=writer)
        thread.start()
        got = []
        with res:
            for item in res.json_stream():
                got.append(item)
                started.set()
        thread.join(10)
    assert got == [0, 1, {"two": 2}, 3] and res.closed


def test_live_binary_bytes_and_subscribers(target: Target) -> None:
    with DurableStream.create(target.url(), content_type="application/octet-stream", body=b"\x00\xff") as ds:
        res = ds.stream(live="sse")
        seen: list[bytes] = []

        def callback(batch: Any) -> None:
            seen.append(batch.data)
            if len(seen) == 1:
                ds.close(b"!")

        res.subscribe_bytes(callback)
        assert b"".join(seen) == b"\x00\xff!" and res.closed


def test_fork_inherits_up_to_the_offset_then_diverges(target: Target) -> None:
    with DurableStream.create(target.url("src"), content_type="application/json", body=[1, 2]) as src:
        middle = src.head().offset
        src.append(3)
        fork = src.fork(target.url("fork"), offset=middle)
        assert fork.content_type is not None and fork.content_type.startswith("application/json")
        fork.append("own")
        assert fork.read_json() == [1, 2, "own"]
        assert src.read_json() == [1, 2, 3]
        whole = src.fork(target.url("fork"))  # default: everything the source has now
        assert whole.read_json() == [1, 2, 3]
        with pytest.raises(ValueError):
            src.fork("http://elsewhere.example/v1/stream/x")


def test_typescript_style_sync_producer_delivers_exactly_once(target: Target) -> None:
    client = httpx.Client(transport=LoseResponses({"0", "2"}))
    with DurableStream.create(target.url(), content_type="application/json", client=client) as ds:
        producer = IdempotentProducer(ds, "sync-writer", max_batch_bytes=64, linger_ms=1)
        for i in range(300):
            producer.append({"i": i})
        producer.flush()
        producer.append("last")
        result = producer.close()
        assert ds.read_json() == [*({"i": i} for i in range(300)), "last"]
        head = ds.head()
        assert head.closed and result.final_offset == head.offset
        assert producer.statistics().pending_messages == 0
    client.close()


def test_sync_producer_as_a_context_manager_flushes_and_fences(target: Target) -> None:
    with DurableStream.create(target.url(), content_type="text/plain") as ds:
        with IdempotentProducer(ds, "job", epoch=0) as old:
            old.append("a")
        with IdempotentProducer(ds, "job", epoch=1) as new:
            new.append("b")
        zombie = IdempotentProducer(ds, "job", epoch=0)
        zombie.append("zombie")
        with pytest.raises(StaleEpochError):
            zombie.flush()
        with pytest.raises(StaleEpochError):
            zombie.close()
        assert ds.read() == "ab"
