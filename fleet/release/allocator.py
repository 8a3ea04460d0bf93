"""glibc's allocator set up for a process that moves megabyte buffers: the file server.

Every reply of the file server allocates a few blocks of about 1 MiB: the range read from
disk, the encoded payload, paho's packet and the slice of it that paho hands to ``send``.
glibc serves blocks above its mmap threshold (128 KiB at start, raised only to the largest
block freed so far) with fresh pages from ``mmap`` and unmaps them on ``free``, so each reply
faulted in and zeroed megabytes of pages and then unmapped them again. During a download that
was a large share of the controller's CPU (``perf``: page faults, page clearing, TLB
shootdowns), and the controller's CPU per MiB served fell once those blocks stayed in the
heap (bench/bench_ota.py; docs/benchmarks.md, "OTA: model transfer goodput and verification
time").

``keep_large_buffers`` raises the mmap threshold and the trim threshold with ``mallopt``, the
same settings as glibc's ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_``
environment variables (which win when set). The cost is memory: up to ``TRIM_THRESHOLD``
bytes of freed heap stay with the process instead of going back to the system. Elsewhere
than glibc (musl, macOS) nothing changes.
"""

from __future__ import annotations

from edge_runtime.allocator import M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, set_mallopt

# Above the largest reply (4 MiB, edge_contract.fetchcodec.MAX_REPLY_PACKET) and within glibc's
# maximum for the mmap threshold (32 MiB on 64-bit systems).
MMAP_THRESHOLD = 16 * 1024 * 1024
# About what the file server holds at once: 32 pending requests of up to 1 MiB each.
TRIM_THRESHOLD = 32 * 1024 * 1024


def keep_large_buffers() -> bool:
    """Keep freed blocks of up to ``MMAP_THRESHOLD`` in the heap for reuse; True if set.

    Process-wide and idempotent. Leaves glibc's settings alone when either environment
    variable is set (the operator chose) and does nothing where ``mallopt`` is missing.
    """
    return set_mallopt({M_MMAP_THRESHOLD: MMAP_THRESHOLD, M_TRIM_THRESHOLD: TRIM_THRESHOLD})
