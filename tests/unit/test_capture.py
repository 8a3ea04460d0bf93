"""The low-confidence capture buffer: atomic records on disk, byte cap, restart, export."""

from __future__ import annotations

import errno
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from agent.inference.capture import CaptureBuffer, CaptureRecord
from agent.ota.fsutil import TEMP_PREFIX

FLUSH_S = 10.0


def _record(n: int, *, row_size: int = 64) -> CaptureRecord:
    rng = np.random.default_rng(n)
    return CaptureRecord(
        model="digits",
        version="1",
        prediction_id=f"p{n}",
        inputs={"pixels": rng.random(row_size, dtype=np.float32)},
        label=str(n % 10),
        confidence=0.25 + n / 1000,
        ts=1_700_000_000.0 + n,
    )


@pytest.fixture
def buffers() -> Iterator[list[CaptureBuffer]]:
    """Buffers a test opens, closed at the end even if it fails (their writer threads stop)."""
    opened: list[CaptureBuffer] = []
    yield opened
    for buffer in opened:
        buffer.close()


def _open(
    buffers: list[CaptureBuffer],
    directory: Path,
    *,
    max_bytes: int = 1 << 20,
    max_queue: int = 256,
    autostart: bool = True,
) -> CaptureBuffer:
    buffer = CaptureBuffer(directory, max_bytes=max_bytes, max_queue=max_queue, autostart=autostart)
    buffers.append(buffer)
    return buffer


def _record_size(tmp_path: Path, buffers: list[CaptureBuffer]) -> int:
    """The on-disk size of one record of ``_record``'s shape (they all have the same size)."""
    probe = _open(buffers, tmp_path / "probe")
    probe.add(_record(0))
    assert probe.flush(FLUSH_S)
    return probe.stats().bytes


class TestCaptureBuffer:
    def test_round_trip(self, tmp_path: Path, buffers: list[CaptureBuffer]) -> None:
        """A record comes back with its metadata and the exact input row, dtype included."""
        buffer = _open(buffers, tmp_path)
        record = _record(7)
        assert buffer.add(record)
        assert buffer.flush(FLUSH_S)
        [info] = buffer.records()
        assert (info.model, info.version, info.prediction_id) == ("digits", "1", "p7")
        assert (info.label, info.confidence, info.ts) == ("7", record.confidence, record.ts)
        assert info.input_names == ("pixels",)
        loaded = buffer.load(info)
        assert loaded["pixels"].dtype == np.float32
        np.testing.assert_array_equal(loaded["pixels"], record.inputs["pixels"])
        assert buffer.stats().count == 1
        assert buffer.stats().bytes == info.path.stat().st_size

    def test_input_names_unsafe_for_zip_members(
        self, tmp_path: Path, buffers: list[CaptureBuffer]
    ) -> None:
        """TF signature names ("serving_default_x:0", with "/") survive as metadata."""
        buffer = _open(buffers, tmp_path)
        inputs = {"serving/x:0": np.arange(3, dtype=np.int64), "mask": np.ones(3, dtype=bool)}
        record = CaptureRecord("m", "2", "id", inputs, "cat", 0.1, 0.0)
        buffer.add(record)
        assert buffer.flush(FLUSH_S)
        [info] = buffer.records()
        loaded = buffer.load(info)
        assert list(loaded) == ["serving/x:0", "mask"]
        np.testing.assert_array_equal(loaded["serving/x:0"], inputs["serving/x:0"])
        np.testing.assert_array_equal(loaded["mask"], inputs["mask"])

    def test_byte_cap_evicts_oldest_first(
        self, tmp_path: Path, buffers: list[CaptureBuffer]
    ) -> None:
        size = _record_size(tmp_path, buffers)
        buffer = _open(buffers, tmp_path / "ring", max_bytes=5 * size + size // 2)
        for n in range(30):
            assert buffer.add(_record(n))
            assert buffer.flush(FLUSH_S)  # one at a time: a tiny default queue is not the point
        stats = buffer.stats()
        assert stats.bytes <= stats.max_bytes
        assert stats.count == 5
        assert stats.evicted == 25
        records = buffer.records()
        assert [r.prediction_id for r in records] == [f"p{n}" for n in range(25, 30)]
        assert sorted(p.name for p in (tmp_path / "ring").iterdir()) == [
            r.path.name for r in records
        ]
        assert sum(r.size for r in records) == stats.bytes

    def test_record_bigger_than_the_cap_is_not_kept(
        self, tmp_path: Path, buffers: list[CaptureBuffer]
    ) -> None:
        buffer = _open(buffers, tmp_path, max_bytes=100)
        buffer.add(_record(1))
        assert buffer.flush(FLUSH_S)
        stats = buffer.stats()
        assert (stats.count, stats.bytes, stats.evicted) == (0, 0, 1)
        assert list(tmp_path.iterdir()) == []

    def test_restart_keeps_records_and_removes_temp_files(
        self, tmp_path: Path, buffers: list[CaptureBuffer]
    ) -> None:
        first = _open(buffers, tmp_path)
        for n in range(3):
            first.add(_record(n))
        assert first.flush(FLUSH_S)
        before = first.records()
        first.close()
        # What a crash in the middle of a write leaves: a temp file that was never renamed.
        crashed = tmp_path / "000000000004.npz.tmp"
        crashed.write_bytes(b"half a record")
        unrelated = tmp_path / "notes.txt"
        unrelated.write_text("not ours")

        second = _open(buffers, tmp_path)
        assert not crashed.exists()
        assert unrelated.exists()
        assert second.records() == before
        assert second.stats().bytes == sum(r.size for r in before)
        second.add(_record(9))
        assert second.flush(FLUSH_S)
        after = second.records()
        assert [r.prediction_id for r in after] == ["p0", "p1", "p2", "p9"]
        assert after[-1].sequence > before[-1].sequence

    def test_restart_removes_the_temp_files_of_fsutil(
        self, tmp_path: Path, buffers: list[CaptureBuffer]
    ) -> None:
        """Records are written through fsutil now: its temp names are what a crash leaves."""
        first = _open(buffers, tmp_path)
        first.add(_record(1))
        assert first.flush(FLUSH_S)
        before = first.records()
        first.close()
        crashed = tmp_path / f"{TEMP_PREFIX}k3j2_x9"
        crashed.write_bytes(b"half a record")

        second = _open(buffers, tmp_path)
        assert not crashed.exists()
        assert second.records() == before
        assert sorted(p.name for p in tmp_path.iterdir()) == [before[0].path.name]

    def test_records_and_exports_are_private(
        self, tmp_path: Path, buffers: list[CaptureBuffer]
    ) -> None:
        """Captured inputs can be private data: owner-only, whatever the umask."""
        buffer = _open(buffers, tmp_path / "capture")
        buffer.add(_record(1))
        assert buffer.flush(FLUSH_S)
        [info] = buffer.records()
        bundle = buffer.export(tmp_path / "bundle.tar")
        assert info.path.stat().st_mode & 0o777 == 0o600
        assert bundle.stat().st_mode & 0o777 == 0o600

    def test_corrupt_record_is_skipped_with_a_log_line(
        self, tmp_path: Path, buffers: list[CaptureBuffer]
    ) -> None:
        first = _open(buffers, tmp_path)
        first.add(_record(1))
        assert first.flush(FLUSH_S)
        first.close()
        (tmp_path / "000000000000.npz").write_bytes(b"PK\x03\x04 not really a zip")
        second = _open(buffers, tmp_path)
        with capture_logs() as logs:
            records = second.records()
        assert [r.prediction_id for r in records] == ["p1"]
        assert [entry["event"] for entry in logs] == ["capture_record_unreadable"]
        assert second.stats().count == 2  # it still takes space until evicted or cleared

    def test_clear_and_remove(self, tmp_path: Path, buffers: list[CaptureBuffer]) -> None:
        buffer = _open(buffers, tmp_path)
        for n in range(4):
            buffer.add(_record(n))
        assert buffer.flush(FLUSH_S)
        first = buffer.records()[0]
        assert buffer.remove(first)
        assert not buffer.remove(first)
        assert not first.path.exists()
        assert buffer.clear() == 3
        assert buffer.records() == []
        assert (buffer.stats().count, buffer.stats().bytes) == (0, 0)
        assert list(tmp_path.iterdir()) == []

    def test_export_bundles_every_record(
        self, tmp_path: Path, buffers: list[CaptureBuffer]
    ) -> None:
        buffer = _open(buffers, tmp_path / "capture")
        for n in range(3):
            buffer.add(_record(n))
        assert buffer.flush(FLUSH_S)
        records = buffer.records()
        out = tmp_path / "out"
        out.mkdir()
        bundle = buffer.export(out)
        assert bundle.parent == out
        with tarfile.open(bundle) as tar:
            names = tar.getnames()
            manifest_file = tar.extractfile("manifest.json")
            assert manifest_file is not None
            manifest = json.loads(manifest_file.read())
        assert sorted(names) == sorted([r.path.name for r in records] + ["manifest.json"])
        assert [entry["prediction_id"] for entry in manifest] == ["p0", "p1", "p2"]
        assert [entry["file"] for entry in manifest] == [r.path.name for r in records]
        assert buffer.stats().count == 3  # exporting does not consume
        named = buffer.export(tmp_path / "bundle.tar")
        assert named == tmp_path / "bundle.tar"
        assert tarfile.is_tarfile(named)
        assert [p.name for p in out.iterdir()] == [bundle.name]  # no temp file left

    def test_full_queue_drops_and_counts(
        self, tmp_path: Path, buffers: list[CaptureBuffer]
    ) -> None:
        """With the writer not started, the queue fills: add() refuses without blocking."""
        buffer = _open(buffers, tmp_path, max_queue=2, autostart=False)
        accepted = [buffer.add(_record(n)) for n in range(5)]
        assert accepted == [True, True, False, False, False]
        assert buffer.stats().dropped_queue_full == 3
        assert buffer.records() == []
        buffer.start()
        assert buffer.flush(FLUSH_S)
        assert [r.prediction_id for r in buffer.records()] == ["p0", "p1"]

    def test_close_writes_what_is_queued_then_refuses(
        self, tmp_path: Path, buffers: list[CaptureBuffer]
    ) -> None:
        buffer = _open(buffers, tmp_path)
        for n in range(3):
            buffer.add(_record(n))
        buffer.close()
        assert len(list(tmp_path.glob("*.npz"))) == 3
        assert not buffer.add(_record(3))

    def test_a_record_that_cannot_be_written_is_counted(
        self, tmp_path: Path, buffers: list[CaptureBuffer]
    ) -> None:
        """Object arrays would need pickle to store: refused, logged, counted; the writer lives."""
        buffer = _open(buffers, tmp_path)
        bad = CaptureRecord("m", "1", "bad", {"x": np.array([{"a": 1}])}, "0", 0.1, 0.0)
        with capture_logs() as logs:
            buffer.add(bad)
            assert buffer.flush(FLUSH_S)
        assert [entry["event"] for entry in logs] == ["capture_write_failed"]
        assert buffer.stats().write_errors == 1
        assert list(tmp_path.iterdir()) == []  # no record, no temp file
        buffer.add(_record(1))
        assert buffer.flush(FLUSH_S)
        assert [r.prediction_id for r in buffer.records()] == ["p1"]

    def test_a_disk_error_is_counted_and_leaves_no_temp_file(
        self, tmp_path: Path, buffers: list[CaptureBuffer], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An OSError mid-write (a full disk; fsutil makes it a StoreError): counted, no temp."""

        def disk_full(handle: object, **members: object) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        buffer = _open(buffers, tmp_path)
        monkeypatch.setattr(np, "savez", disk_full)
        with capture_logs() as logs:
            buffer.add(_record(1))
            assert buffer.flush(FLUSH_S)
        monkeypatch.undo()
        assert [entry["event"] for entry in logs] == ["capture_write_failed"]
        assert buffer.stats().write_errors == 1
        assert list(tmp_path.iterdir()) == []
        buffer.add(_record(2))
        assert buffer.flush(FLUSH_S)
        assert [r.prediction_id for r in buffer.records()] == ["p2"]

    @pytest.mark.parametrize(("max_bytes", "max_queue"), [(0, 4), (1000, 0)])
    def test_rejects_bad_limits(self, tmp_path: Path, max_bytes: int, max_queue: int) -> None:
        with pytest.raises(ValueError, match="must be positive, got 0"):
            CaptureBuffer(tmp_path, max_bytes=max_bytes, max_queue=max_queue)
