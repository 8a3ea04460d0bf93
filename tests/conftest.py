"""The split of `make test` into a parallel pass and a serial one (``serial`` marker).

`make test` first runs the suite on several pytest-xdist workers, then once more with
``--serial-only``. Tests marked ``serial`` want the CPU to themselves: a run on xdist workers
(``-n N``, N > 0) leaves them out, the serial-only run keeps nothing else; ``-n 0`` or no
``-n`` runs everything. Selection is done here rather than with ``-m``, so that
``PYTEST_ARGS='-m "not slow"'`` still composes.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--serial-only",
        action="store_true",
        help="run only the tests marked serial (the second pass of `make test`)",
    )


def _parallel(config: pytest.Config) -> bool:
    """Whether this process is one of several pytest-xdist workers."""
    return hasattr(config, "workerinput") or bool(config.getoption("numprocesses", 0) or 0)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    serial_only = config.getoption("serial_only")
    if not serial_only and not _parallel(config):
        return
    keep: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        serial = item.get_closest_marker("serial") is not None
        (keep if serial == serial_only else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
