"""The file server's allocator setting, checked in fresh Python processes with glibc's own
count of mmap'd blocks (``mallinfo2().hblks``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")

PROBE = textwrap.dedent(
    """
    import ctypes, json, sys
    from fleet.release.allocator import keep_large_buffers

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2
    kept = keep_large_buffers() if sys.argv[1] == "keep" else None
    before = libc.mallinfo2().hblks
    blocks = [bytearray(3 * 1024 * 1024) for _ in range(2)]  # like a reply's buffers
    during = libc.mallinfo2().hblks
    print(json.dumps({"kept": kept, "new_mmapped_blocks": during - before}))
    """
)


def _probe(mode: str, env: dict[str, str] | None = None) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **(env or {})},
        timeout=60,
    )
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_megabyte_blocks_come_from_the_heap_once_kept() -> None:
    assert _probe("keep") == {"kept": True, "new_mmapped_blocks": 0}


def test_without_it_glibc_maps_each_megabyte_block() -> None:
    # The control: the probe can tell, so the test above would fail without the setting.
    assert _probe("default") == {"kept": None, "new_mmapped_blocks": 2}


def test_the_operators_environment_wins() -> None:
    result = _probe("keep", env={"MALLOC_MMAP_THRESHOLD_": "131072"})
    assert result == {"kept": False, "new_mmapped_blocks": 2}
