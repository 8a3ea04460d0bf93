"""Prometheus file-based service discovery from the device list (``fleet devices
prometheus-targets``): ``file_sd`` is pure, devices in and the file_sd document out.

The controller does not know where a device is on the network (its status carries no
address), so each target is made from ``--host-template``: ``{device}`` is the device id
and ``{port}`` the agent's ``[metrics] port`` (default ``{device}:{port}``, a name the
site's DNS or mDNS resolves, e.g. ``{device}.local:{port}``). Each target is labelled
``device`` (what the Grafana device dashboard selects on) and, for a selected listing
(``--select``), each merged tag as ``tag_<key>``. Written atomically: Prometheus re-reads
the file when it changes and must never see half of it.
"""

from __future__ import annotations

import json
import os
import re
import string
import tempfile
from collections.abc import Sequence
from pathlib import Path

from edge_contract.controller import DeviceSummary
from fleet.errors import FleetConfigError

DEFAULT_TEMPLATE = "{device}:{port}"
_FIELDS = frozenset({"device", "port"})
_LABEL_UNSAFE = re.compile(r"[^a-zA-Z0-9_]")


class TargetTemplateError(FleetConfigError):
    """A ``--host-template`` that cannot make a target (exit 78, like any bad option)."""


def check_template(template: str) -> None:
    """Raises ``TargetTemplateError`` unless ``template`` uses only ``{device}`` and
    ``{port}`` and names ``{device}`` (else every device would be one target)."""
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise TargetTemplateError(f"--host-template {template!r}: {exc}") from exc
    unknown = fields - _FIELDS
    if unknown or "device" not in fields:
        raise TargetTemplateError(
            f"--host-template {template!r} must contain {{device}} and may contain {{port}} "
            f"only (found {sorted(fields)})"
        )
    if any(c.isspace() for c in template) or "/" in template:
        raise TargetTemplateError(f"--host-template {template!r}: a host[:port], no spaces or /")


def file_sd(
    devices: Sequence[DeviceSummary], *, port: int, host_template: str = DEFAULT_TEMPLATE
) -> list[dict[str, object]]:
    """One target group per device, sorted by device id."""
    check_template(host_template)
    groups: list[dict[str, object]] = []
    for device in sorted(devices, key=lambda d: d.device_id):
        labels = {"device": device.device_id}
        for key, value in sorted(device.tags.items()):
            if key != "device":
                labels[f"tag_{_LABEL_UNSAFE.sub('_', key)}"] = value
        target = host_template.format(device=device.device_id, port=port)
        groups.append({"targets": [target], "labels": labels})
    return groups


def write_atomically(path: Path, groups: list[dict[str, object]]) -> None:
    """Replace ``path`` with the document in one rename."""
    text = json.dumps(groups, indent=2) + "\n"
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or Path("."))
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
        os.chmod(temporary, 0o644)  # Prometheus, maybe another user, reads it
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
