"""The on-disk outbox: FIFO, persistent seq, byte cap with counted drops, atomic appends."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.errors import StoreError
from agent.uplink.outbox import DropReport, Outbox


def _telemetry(seq: int, drops: DropReport) -> bytes:
    return json.dumps({"seq": seq, "dropped": drops.since_last, "total": drops.total}).encode()


class TestOutbox:
    def test_fifo_and_delete(self, tmp_path: Path) -> None:
        """Rows come back oldest first; deleted rows are gone and the counts follow."""
        box = Outbox(tmp_path / "q.db", max_bytes=1 << 20)
        for n in range(5):
            box.append("t", f"m{n}".encode())
        rows = box.fetch(after_id=0, limit=10)
        assert [r.payload for r in rows] == [b"m0", b"m1", b"m2", b"m3", b"m4"]
        assert [r.payload for r in box.fetch(after_id=rows[1].id, limit=2)] == [b"m2", b"m3"]
        box.delete([rows[0].id, rows[1].id])
        assert box.stats().depth == 3
        assert box.stats().bytes == 3 * (2 + 1)

    def test_fetch_returns_every_field_byte_for_byte(self, tmp_path: Path) -> None:
        """Binary payloads (NUL, invalid UTF-8, empty), non-ASCII topics, qos and retain."""
        box = Outbox(tmp_path / "q.db", max_bytes=1 << 20)
        sent = [
            ("fleet/a/telemetry", b"\x00\xff\xfe{\x00}", 1, False),
            ("fleet/b/\u00e9v\u00e9nements", b"", 0, True),
            ("fleet/c/\U0001f600", bytes(range(256)), 2, False),
            ("t", b"\xc3", 1, True),
        ]
        for topic, payload, qos, retain in sent:
            box.append(topic, payload, qos=qos, retain=retain)
        rows = box.fetch(after_id=0, limit=10)
        assert [(r.topic, r.payload, r.qos, r.retain) for r in rows] == sent
        assert [r.id for r in rows] == sorted(r.id for r in rows)
        assert [r.payload for r in box.fetch(after_id=rows[1].id, limit=1)] == [sent[2][1]]
        assert box.fetch(after_id=rows[-1].id, limit=10) == []

    def test_seq_and_queue_survive_reopen(self, tmp_path: Path) -> None:
        """seq keeps growing and queued rows stay after the process restarts."""
        path = tmp_path / "q.db"
        box = Outbox(path, max_bytes=1 << 20)
        assert [box.append_sequenced("t", _telemetry) for _ in range(3)] == [1, 2, 3]
        stream = box.stream
        box.close()
        again = Outbox(path, max_bytes=1 << 20)
        assert again.append_sequenced("t", _telemetry) == 4
        assert again.stream == stream
        assert again.stats().depth == 4
        assert [json.loads(r.payload)["seq"] for r in again.fetch(after_id=0, limit=9)] == [
            1,
            2,
            3,
            4,
        ]

    def test_a_new_state_dir_is_a_new_stream(self, tmp_path: Path) -> None:
        """Two outboxes get different stream ids, so restarting seq is not a duplicate."""
        assert (
            Outbox(tmp_path / "a.db", max_bytes=4096).stream
            != Outbox(tmp_path / "b.db", max_bytes=4096).stream
        )

    def test_cap_drops_the_oldest_and_counts_them(self, tmp_path: Path) -> None:
        """Over the byte cap the oldest rows go; the next sequenced message reports the drops."""
        box = Outbox(tmp_path / "q.db", max_bytes=1000)
        for n in range(10):
            box.append("t", bytes([n]) * 199)  # 200 bytes each with the topic
        stats = box.stats()
        assert stats.depth == 5 and stats.bytes == 1000 and stats.dropped_total == 5
        assert [r.payload[0] for r in box.fetch(after_id=0, limit=10)] == [5, 6, 7, 8, 9]
        box.append_sequenced("t", _telemetry)
        last = box.fetch(after_id=0, limit=10)[-1]
        report = json.loads(last.payload)
        assert (report["dropped"], report["total"]) >= (5, 5)
        box.append_sequenced("t", _telemetry)
        follow_up = json.loads(box.fetch(after_id=0, limit=10)[-1].payload)
        assert follow_up["total"] == box.stats().dropped_total
        assert follow_up["dropped"] == follow_up["total"] - report["total"]

    def test_rows_in_flight_are_not_dropped(self, tmp_path: Path) -> None:
        """A row handed to the broker stays until its PUBACK, even when the cap is hit."""
        box = Outbox(tmp_path / "q.db", max_bytes=600)
        box.append("t", b"a" * 199)
        first = box.fetch(after_id=0, limit=1)
        box.mark_inflight(r.id for r in first)
        for _ in range(4):
            box.append("t", b"b" * 199)
        remaining = box.fetch(after_id=0, limit=10)
        assert remaining[0].id == first[0].id
        assert box.stats().dropped_total == 2

    def test_acknowledged_rows_make_room_first_and_are_not_drops(self, tmp_path: Path) -> None:
        """Rows the broker has (awaiting their batched delete) go first, uncounted."""
        box = Outbox(tmp_path / "q.db", max_bytes=600)
        for name in (b"a", b"b", b"c"):
            box.append("t", name * 199)
        handed = box.fetch(after_id=0, limit=3)
        box.mark_inflight(r.id for r in handed)
        box.mark_acked(handed[0].id)
        box.mark_acked(handed[1].id)
        box.append("t", b"d" * 199)
        box.append("t", b"e" * 199)
        assert box.stats().dropped_total == 0
        assert [r.payload[:1] for r in box.fetch(after_id=0, limit=10)] == [b"c", b"d", b"e"]
        assert (box.stats().depth, box.stats().bytes) == (3, 600)
        box.append("t", b"f" * 199)  # c is in flight and not acknowledged: d is the drop
        assert box.stats().dropped_total == 1
        assert [r.payload[:1] for r in box.fetch(after_id=0, limit=10)] == [b"c", b"e", b"f"]
        box.delete([handed[0].id, handed[1].id])  # the forwarder's late delete changes nothing
        assert (box.stats().depth, box.stats().bytes) == (3, 600)

    def test_cap_looks_past_a_long_run_of_rows_in_flight(self, tmp_path: Path) -> None:
        """More rows in flight than one scan page still leaves newer rows to drop."""
        box = Outbox(tmp_path / "q.db", max_bytes=71 * 20)
        for _ in range(71):
            box.append("t", b"x" * 19)
        box.mark_inflight(r.id for r in box.fetch(after_id=0, limit=70))
        box.append("t", b"y" * 19)
        stats = box.stats()
        assert stats.dropped_total == 1 and stats.bytes == 71 * 20
        assert box.fetch(after_id=0, limit=100)[-1].payload == b"y" * 19

    def test_message_larger_than_the_cap_is_dropped_and_counted(self, tmp_path: Path) -> None:
        """One message bigger than the whole queue does not evict everything else."""
        box = Outbox(tmp_path / "q.db", max_bytes=4096)
        box.append("t", b"keep")
        box.append("t", b"x" * 5000)
        assert [r.payload for r in box.fetch(after_id=0, limit=5)] == [b"keep"]
        assert box.stats().dropped_total == 1

    def test_failed_build_changes_nothing(self, tmp_path: Path) -> None:
        """If building the payload fails, no seq is used and nothing is queued."""
        box = Outbox(tmp_path / "q.db", max_bytes=4096)

        def broken(_seq: int, _drops: DropReport) -> bytes:
            raise RuntimeError("sensor exploded")

        with pytest.raises(RuntimeError):
            box.append_sequenced("t", broken)
        assert box.stats().depth == 0
        assert box.append_sequenced("t", _telemetry) == 1

    def test_unopenable_database_is_a_store_error(self, tmp_path: Path) -> None:
        """A path that cannot hold a database gives StoreError naming the path."""
        blocker = tmp_path / "file"
        blocker.write_text("not a dir")
        with pytest.raises(StoreError) as error:
            Outbox(blocker / "q.db", max_bytes=4096)
        assert str(blocker) in str(error.value)

    def test_corrupt_database_is_a_store_error(self, tmp_path: Path) -> None:
        """Garbage where the database should be is reported, not crashed on."""
        path = tmp_path / "q.db"
        path.write_bytes(b"this is not sqlite" * 100)
        with pytest.raises(StoreError, match="cannot open outbox"):
            Outbox(path, max_bytes=4096)

    def test_acknowledged_rows_leave_the_depth_before_their_delete(self, tmp_path: Path) -> None:
        """depth counts what the broker does not have yet; bytes what is still on disk."""
        box = Outbox(tmp_path / "q.db", max_bytes=1 << 20)
        for n in range(3):
            box.append("t", bytes([n]) * 9)
        first = box.fetch(after_id=0, limit=1)[0]
        box.mark_acked(first.id)
        assert (box.stats().depth, box.stats().bytes) == (2, 30)
        box.delete([first.id])
        assert (box.stats().depth, box.stats().bytes) == (2, 20)
