"""The rejection ledger: counts by reason, bounded dead letters, one log line per window."""

from __future__ import annotations

from typing import Any

from edge_runtime.mqtt.rejections import RejectionLedger


class _Log:
    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.lines.append({"event": event, **fields})


def test_counts_keep_and_throttle() -> None:
    """1,000 refusals: all counted, the last 10 kept, one log line per reason per window."""
    now = [0.0]
    log = _Log()
    ledger = RejectionLedger(
        log, keep=10, log_every_s=60, clock=lambda: now[0], wall_clock=lambda: 5.0
    )
    for i in range(1000):
        ledger.reject("fleet/a/cmd/x", b"[" * 200, "too_deep", f"n{i}", retained=True)
    ledger.reject("fleet/a/cmd/x", b"{}", "schema", "seq: bad", retained=False)
    assert ledger.counts == {"too_deep": 1000, "schema": 1}
    assert ledger.total == 1001
    assert len(ledger.recent()) == 10
    assert ledger.recent()[-1].reason == "schema"
    assert ledger.recent()[0].excerpt == b"[" * 64
    assert [line["reason"] for line in log.lines] == ["too_deep", "schema"]
    now[0] = 61.0
    ledger.reject("fleet/a/cmd/x", b"[", "too_deep", "again", retained=False)
    assert log.lines[-1]["suppressed_since_last"] == 999
    assert ledger.recent()[-1].as_dict()["excerpt"] == "["
