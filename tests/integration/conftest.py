"""Fixtures for integration tests: a private Mosquitto per test, on a free loopback port."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from devtools.localbroker import PrivateBroker
from tests.integration.harness import ManagedProcess

if TYPE_CHECKING:
    from tests.integration.ota_harness import Fleet

# Runs only in .venv-tflite (numpy<2 + tflite-runtime 2.14); `make test` runs it there by path.
# Likewise the TF Serving client's test, in .venv-tfserving (TensorFlow).
collect_ignore = ["test_tflite_runtime_compat.py", "test_grpc_tf_serving.py"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in str(item.path):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    """A fresh broker with its own config and data dir; tests may stop and restart it."""
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.fail("mosquitto is not installed: run `make test`, which installs it")
    instance = PrivateBroker(tmp_path / "broker")
    instance.start()
    yield instance
    instance.stop()


@pytest.fixture
def fleet(tmp_path: Path, broker: PrivateBroker) -> Iterator[Fleet]:
    """The OTA test bench (``tests/integration/ota_harness.py``) on this test's broker."""
    # Imported here: the harness loads onnx and python-tuf, which .venv-tflite does not have.
    from tests.integration.ota_harness import ota_fleet

    with ota_fleet(tmp_path, broker) as bench:
        yield bench


@pytest.fixture
def processes() -> Iterator[list[ManagedProcess]]:
    """Processes registered here are killed at the end of the test, whatever happens."""
    started: list[ManagedProcess] = []
    yield started
    for process in started:
        process.stop()
