"""The checkpoint payload: version 2 (an array per stream, trailing defaults
left out) round-trips every field, and version 1 (an object per stream),
written by earlier releases, still loads."""

from __future__ import annotations

import dataclasses

import orjson
import pytest

from trio_streams.protocol.headers import Expiry, Producer
from trio_streams.protocol.state import ForkOrigin, ProducerState, StreamState, StreamTable
from trio_streams.storage.checkpoint import decode_table, encode_table

PLAIN = StreamState(3, "plain", "text/plain", Expiry(), 1.5e9, tail=12)
# One stream per optional field, each set to something other than its default.
VARIED = [
    dataclasses.replace(PLAIN, expiry=Expiry(ttl_s=60)),
    dataclasses.replace(PLAIN, expiry=Expiry(expires_at="2030-01-01T00:00:00Z", expires_at_s=1.8934272e9)),
    dataclasses.replace(PLAIN, closed=True),
    dataclasses.replace(PLAIN, closed=True, closed_by=Producer("p", 2, 7)),
    dataclasses.replace(PLAIN, last_seq="0009"),
    dataclasses.replace(PLAIN, producers={"p": ProducerState(1, 4), "q": ProducerState(0, 0)}),
    dataclasses.replace(PLAIN, fork=ForkOrigin(1, "/src", 5, 2, 7), tail=20),
    dataclasses.replace(PLAIN, refcount=2),
    dataclasses.replace(PLAIN, refcount=1, soft_deleted=True),
    dataclasses.replace(PLAIN, damaged="its data file is missing"),
]


def _table(*states: StreamState) -> StreamTable:
    table = StreamTable()
    for number, state in enumerate(states):
        table.add(dataclasses.replace(state, stream_id=number + 1, path=f"{state.path}-{number}"))
    table.fenced_ids = {40: "its files exist but its creation was in damaged WAL"}
    table.next_stream_id = 41
    return table


def _states(table: StreamTable) -> list[StreamState]:
    return sorted(table.by_id.values(), key=lambda state: state.stream_id)


@pytest.mark.parametrize("state", [PLAIN, *VARIED])
def test_every_field_round_trips(state: StreamState) -> None:
    table = _table(state)
    decoded = decode_table(encode_table(table))
    assert _states(decoded) == _states(table)
    assert decoded.fenced_ids == table.fenced_ids and decoded.next_stream_id == 41


def test_a_stream_with_every_field_at_its_default_is_five_values() -> None:
    doc = orjson.loads(encode_table(_table(PLAIN, VARIED[-1])))
    assert doc["version"] == 2
    assert doc["streams"][0] == [1, "plain-0", "text/plain", 1.5e9, 12]
    assert len(doc["streams"][1]) == 5 + 11  # damaged is the last field: nothing left out


V1 = orjson.dumps({"version": 1, "next_stream_id": 9, "streams": [
    {"id": 1, "path": "src", "ct": "text/plain", "ttl": None, "exp": None, "exp_s": None, "at": 1.5e9,
     "tail": 10, "closed": False, "closed_by": None, "seq": None, "producers": {}, "fork": None,
     "refcount": 1, "soft_deleted": True},
    {"id": 4, "path": "fork", "ct": "application/json", "ttl": 30, "exp": None, "exp_s": None, "at": 1.6e9,
     "tail": 15, "closed": True, "closed_by": ["p", 1, 3], "seq": "7", "producers": {"p": [1, 3]},
     "fork": [1, "/src", 6, 0, 6], "refcount": 0, "soft_deleted": False, "damaged": "lost"},
], "fenced_ids": [[7, "why"]]})


def test_a_version_1_checkpoint_still_loads() -> None:
    table = decode_table(V1)
    assert _states(table) == [
        StreamState(1, "src", "text/plain", Expiry(), 1.5e9, tail=10, refcount=1, soft_deleted=True),
        StreamState(4, "fork", "application/json", Expiry(ttl_s=30), 1.6e9, tail=15, closed=True,
                    closed_by=Producer("p", 1, 3), last_seq="7", producers={"p": ProducerState(1, 3)},
                    fork=ForkOrigin(1, "/src", 6, 0, 6), damaged="lost"),
    ]
    assert table.fenced_ids == {7: "why"} and table.next_stream_id == 9
    assert _states(decode_table(encode_table(table))) == _states(table)


@pytest.mark.parametrize("fields", [[1, "a", "text/plain", 1.5e9], [1, "a", "text/plain", 1.5e9, 0, *[None] * 15]])
def test_a_stream_with_too_few_or_too_many_fields_is_refused(fields: list[object]) -> None:
    payload = orjson.dumps({"version": 2, "next_stream_id": 2, "streams": [fields], "fenced_ids": []})
    with pytest.raises(ValueError, match="fields"):
        decode_table(payload)


def test_an_unknown_version_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported checkpoint version 3"):
        decode_table(orjson.dumps({"version": 3, "next_stream_id": 1, "streams": [], "fenced_ids": []}))
