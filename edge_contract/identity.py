"""A device's identity beyond its id: its hardware id and its static tags (shared syntax).

The agent reports both in its status (``[device] hardware_id`` and ``[device] tags``); the
controller builds selectors on them and a release's variants name hardware ids. Pure: the
patterns and limits both sides validate with.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import StringConstraints

HARDWARE_ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
TAG_KEY_PATTERN = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
TAG_VALUE_PATTERN = re.compile(r"[A-Za-z0-9_.:/@+-]{1,128}")
MAX_TAGS = 32

HardwareId = Annotated[str, StringConstraints(pattern=f"^{HARDWARE_ID_PATTERN.pattern}$")]
TagKey = Annotated[str, StringConstraints(pattern=f"^{TAG_KEY_PATTERN.pattern}$")]
TagValue = Annotated[str, StringConstraints(pattern=f"^{TAG_VALUE_PATTERN.pattern}$")]


def tag_problem(key: str, value: str) -> str | None:
    """Why ``key = value`` is not a valid tag (naming the key), or None when it is."""
    if not TAG_KEY_PATTERN.fullmatch(key):
        return f"tag key {key[:80]!r} does not match {TAG_KEY_PATTERN.pattern}"
    if not TAG_VALUE_PATTERN.fullmatch(value):
        return f"tag {key!r}: value {value[:80]!r} does not match {TAG_VALUE_PATTERN.pattern}"
    return None
