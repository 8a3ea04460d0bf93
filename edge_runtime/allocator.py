"""glibc's allocator settings, made from inside the process with ``mallopt``.

Both sides tune the same knob for opposite workloads: the controller's file server keeps
megabyte buffers in the heap for reuse (``fleet.release.allocator``), the agent's REST service
returns request bodies to the system (``agent.inference.serve``). This module is the one call
into glibc: it leaves everything alone where an operator chose through glibc's own
environment variables, and elsewhere than glibc (musl, macOS).
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Mapping

import structlog

log = structlog.get_logger("edge_runtime.allocator")

# mallopt parameters, from glibc's <malloc.h>, with the environment variable of each.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
ENVIRONMENT = {
    M_TRIM_THRESHOLD: "MALLOC_TRIM_THRESHOLD_",
    M_MMAP_THRESHOLD: "MALLOC_MMAP_THRESHOLD_",
}


def set_mallopt(settings: Mapping[int, int]) -> bool:
    """Apply ``{parameter: value}`` with ``mallopt``; True if every one was set.

    Process-wide and idempotent. Nothing is set when the environment names any of these
    parameters (the operator chose), or where ``mallopt`` is missing.
    """
    if not sys.platform.startswith("linux"):
        return False
    chosen = [ENVIRONMENT[p] for p in settings if ENVIRONMENT.get(p) in os.environ]
    if chosen:
        log.info("allocator.from_environment", variables=chosen)
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = all(bool(mallopt(parameter, value)) for parameter, value in settings.items())
    if not done:
        log.warning("allocator.mallopt_refused", settings=dict(settings))
    return done
