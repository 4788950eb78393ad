"""Retention's pure parts: headers, rules, policy choice, age marks, trim targets,
the table's fork limit, the WAL codec and the checkpoint of retained state."""

from __future__ import annotations

import pytest

from trio_streams.config import Settings
from trio_streams.protocol.errors import ProtocolError
from trio_streams.protocol.headers import Expiry
from trio_streams.protocol.retention import (
    AGE_MARKS_MAX, KEEP_ALL, Retention, Rule, add_age_mark, age_target, bytes_target, drop_marks_below,
    parse_headers, parse_rules, policy_for,
)
from trio_streams.protocol.state import Appended, Created, Deleted, ForkOrigin, StreamTable, Trimmed
from trio_streams.storage.checkpoint import decode_table, encode_table
from trio_streams.storage.events import decode_event, encode_event


def test_headers_give_a_policy_only_when_sent() -> None:
    assert parse_headers({}) is None
    assert parse_headers({"trio-streams-retention-max-age": "60"}) == Retention(60, 0)
    assert parse_headers({"trio-streams-retention-max-bytes": " 1024 "}) == Retention(0, 1024)
    assert parse_headers({"trio-streams-retention-max-bytes": "0", "trio-streams-retention-max-age": "0"}) == KEEP_ALL


@pytest.mark.parametrize("value", ["", "-1", "+5", "01", "1.5", "1e3", "9" * 17, "٣"])
def test_malformed_header_values_are_400(value: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_headers({"trio-streams-retention-max-age": value})
    assert info.value.status == 400 and info.value.code == "INVALID_HEADER"


def test_rules_parse_and_the_longest_prefix_wins() -> None:
    rules = parse_rules(" logs/ max_bytes=100 ; logs/audit/ max_age_s=5 max_bytes=0;;")
    assert rules == (Rule("logs/", Retention(0, 100)), Rule("logs/audit/", Retention(5, 0)))
    default = Retention(7, 7)
    assert policy_for("logs/audit/x", None, rules, default) == Retention(5, 0)
    assert policy_for("logs/app", None, rules, default) == Retention(0, 100)
    assert policy_for("other", None, rules, default) == default
    assert policy_for("logs/app", KEEP_ALL, rules, default) == KEEP_ALL, "a stream's own policy wins whole"


@pytest.mark.parametrize("text", ["logs/ max_bytes", "logs/ size=5", "logs/ max_bytes=-1", "a/ max_age_s=1; a/ max_bytes=2"])
def test_malformed_rules_refuse_to_start(text: str) -> None:
    with pytest.raises(ValueError, match="retention_rules"):
        Settings(retention_rules=text)


def test_age_marks_date_data_no_older_than_it_is_and_stay_bounded() -> None:
    marks: list[tuple[float, int]] = []
    add_age_mark(marks, 100.0, 10)
    add_age_mark(marks, 100.5, 20)  # within a mark interval: shares the mark, at the later time
    assert marks == [(100.5, 20)]
    for i in range(1, 200):
        add_age_mark(marks, 100.5 + 10 * i, 20 + i)
    assert len(marks) == AGE_MARKS_MAX
    assert marks[-1] == (100.5 + 1990, 219)
    assert all(later[0] > earlier[0] and later[1] > earlier[1] for earlier, later in zip(marks, marks[1:]))
    drop_marks_below(marks, marks[3][1])
    assert len(marks) == AGE_MARKS_MAX - 4


def test_trim_targets() -> None:
    marks = [(10.0, 100), (20.0, 200), (30.0, 300)]
    assert age_target(marks, 0, 1000.0) is None, "no age limit"
    assert age_target(marks, 15, 30.0) == 100
    assert age_target(marks, 15, 35.0) == 200
    assert age_target(marks, 15, 24.9) is None
    assert bytes_target(0, 1000, 0, 1) is None, "no byte budget"
    assert bytes_target(0, 1000, 900, 100) == 100
    assert bytes_target(0, 1000, 900, 101) is None, "trims come in steps"
    assert bytes_target(500, 1000, 900, 1) is None


def _created(stream_id: int, path: str, data: bytes = b"", fork: ForkOrigin | None = None) -> Created:
    return Created(stream_id, path, "application/octet-stream", Expiry(), 1.0, False, data, fork)


def test_apply_holds_a_trim_below_what_live_forks_read() -> None:
    table = StreamTable()
    table.apply(_created(1, "src", b"x" * 100))
    table.apply(_created(2, "fork", b"", ForkOrigin(1, "src", 60, 0, 60)))
    table.apply(Trimmed(1, 80))
    assert table.by_id[1].head == 0, "the fork reads the source from 0"
    table.apply(Trimmed(2, 50))  # the fork's own retention moves its head into the source's range
    table.apply(Trimmed(1, 80))
    assert table.by_id[1].head == 50 and table.trimmed == [2, 1]
    table.apply(Appended(2, 60, b"y" * 10))
    table.apply(Trimmed(2, 65))  # past its base: it reads nothing of the source any more
    table.apply(Trimmed(1, 80))
    assert table.by_id[1].head == 80
    table.apply(Trimmed(1, 1000))
    assert table.by_id[1].head == 100, "never past the tail"
    table.apply(Deleted(2))
    table.apply(Deleted(1))
    assert table.apply(Trimmed(1, 100)) is None, "a trim of a stream removed meanwhile changes nothing"


def test_a_fork_made_below_the_source_head_starts_at_its_base() -> None:
    table = StreamTable()
    table.apply(_created(1, "src", b"x" * 100))
    table.apply(Trimmed(1, 70))
    table.apply(_created(2, "low", b"", ForkOrigin(1, "src", 40, 0, 40)))
    table.apply(_created(3, "high", b"", ForkOrigin(1, "src", 90, 0, 90)))
    assert (table.by_id[2].head, table.by_id[3].head) == (40, 70)


def test_wal_records_carry_policy_time_and_trims() -> None:
    created = Created(5, "p", "text/plain", Expiry(), 2.0, False, b"ab", None, Retention(60, 1000))
    appended = Appended(5, 2, b"cd", at=123.25)
    for event in (created, appended, Trimmed(5, 3), Appended(5, 4, b"ef")):
        assert decode_event(*encode_event(event)) == event


def test_checkpoints_keep_policy_head_and_marks() -> None:
    table = StreamTable()
    table.apply(Created(1, "a", "text/plain", Expiry(), 2.0, False, b"", None, Retention(60, 0)))
    table.apply(Appended(1, 0, b"x" * 10, at=5.0))
    table.apply(Appended(1, 10, b"x" * 10, at=50.0))
    table.apply(Trimmed(1, 10))
    table.apply(_created(2, "plain", b"z"))
    table.apply(_created(3, "fork", b"", ForkOrigin(1, "a", 15, 0, 15)))
    loaded = decode_table(encode_table(table))
    assert loaded.by_id == table.by_id
    assert loaded.by_id[1].marks == [(50.0, 20)] and loaded.by_id[1].head == 10
    assert loaded.forks == {1: {3}}, "the fork limit is rebuilt from the checkpoint"


def test_the_fork_index_forgets_deleted_forks() -> None:
    table = StreamTable()
    table.apply(_created(1, "src", b"x" * 10))
    table.apply(_created(2, "a", b"", ForkOrigin(1, "src", 5, 0, 5)))
    table.apply(_created(3, "b", b"", ForkOrigin(2, "a", 5, 0, 5)))
    assert table.forks == {1: {2}, 2: {3}}
    table.apply(Deleted(2))  # soft: b still reads it
    table.apply(Deleted(3))  # removes b, then a (cascade)
    assert table.forks == {} and set(table.by_id) == {1}
