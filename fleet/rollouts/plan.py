"""Stage plans: ``--stages`` parsing and which devices each stage adds.

A plan is a list of ``StageSize`` (a count such as ``1`` or a share such as ``10%``) ending in
``100%``. Membership is deterministic: devices are ranked by ``sha256("<rollout>/<device>")``,
so the same rollout always picks the same canaries and another rollout picks others. Each stage
only adds devices (members stay members), so every stage is a superset of the one before.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet

from fleet.errors import RolloutError
from fleet.rollouts.model import StageSize

MAX_TEXT = 512  # characters of ``--stages``
MAX_STAGES = 32  # RolloutSpec.stages keeps at most this many
_COUNT = re.compile(r"[1-9][0-9]{0,6}")
_PERCENT = re.compile(r"(?P<number>[0-9]{1,3}(?:\.[0-9]{1,3})?)%")


def parse_stages(text: str) -> tuple[StageSize, ...]:
    """``"1,10%,50%,100%"`` as stage sizes; ``RolloutError`` naming the entry at fault."""
    if len(text) > MAX_TEXT:
        raise RolloutError(f"--stages is longer than {MAX_TEXT} characters", value=text[:64])
    entries = [entry.strip() for entry in text.split(",")]
    if len(entries) > MAX_STAGES:
        raise RolloutError(f"--stages has {len(entries)} entries, at most {MAX_STAGES}", value=text)
    stages = tuple(_entry(index, entry) for index, entry in enumerate(entries, 1))
    check_stages(stages)
    return stages


def _entry(index: int, entry: str) -> StageSize:
    if _COUNT.fullmatch(entry) and int(entry) <= 1_000_000:
        return StageSize(count=int(entry))
    match = _PERCENT.fullmatch(entry)
    if match is not None and 0.0 < float(match["number"]) <= 100.0:
        return StageSize(percent=float(match["number"]))
    raise RolloutError(
        f"--stages entry {index} {entry!r} is neither a device count (1 to 1000000) "
        "nor a share of the selection (above 0% up to 100%)",
        value=entry,
    )


def check_stages(stages: Sequence[StageSize]) -> None:
    """Refuse a plan whose counts or shares do not grow, or that does not end in ``100%``."""
    if not stages:
        raise RolloutError("--stages is empty", value="")
    last: dict[str, float] = {}
    for index, size in enumerate(stages, 1):
        kind, amount = _kind(index, size)
        if kind in last and amount <= last[kind]:
            raise RolloutError(
                f"--stages entry {index} {format_stage(size)!r} does not grow past the "
                f"{'count' if kind == 'count' else 'share'} before it",
                value=format_stage(size),
            )
        last[kind] = amount
    if stages[-1].percent != 100.0:
        final = format_stage(stages[-1])
        raise RolloutError(
            f"--stages must end with 100% (a rollout completes on its whole selection), "
            f"not {final!r}",
            value=final,
        )


def _kind(index: int, size: StageSize) -> tuple[str, float]:
    if size.count is not None and size.percent is None:
        return "count", float(size.count)
    if size.percent is not None and size.count is None:
        return "percent", size.percent
    raise RolloutError(f"stage {index} must be a count or a share, not both or neither", value="")


def format_stage(size: StageSize) -> str:
    """``1`` or ``10%``, as an operator wrote it."""
    if size.count is not None:
        return str(size.count)
    return f"{size.percent:g}%"


def format_stages(stages: Sequence[StageSize]) -> str:
    return ",".join(format_stage(size) for size in stages)


def stage_target(size: StageSize, n: int) -> int:
    """How many of ``n`` devices a stage of this size covers: a count (at most ``n``) or
    the share rounded up, at least 1 when there is any device."""
    if n <= 0:
        return 0
    if size.count is not None:
        return min(size.count, n)
    percent = size.percent if size.percent is not None else 100.0
    # round() first: 10% of 30 is 3.0000000000000004 in floats, which must not ceil to 4
    return max(1, min(n, math.ceil(round(percent * n / 100.0, 9))))


def rank(rollout_id: str, device_ids: Iterable[str]) -> list[str]:
    """The devices in this rollout's order (canaries first); duplicates dropped."""
    return sorted(set(device_ids), key=lambda device: (_digest(rollout_id, device), device))


def _digest(rollout_id: str, device_id: str) -> str:
    return hashlib.sha256(f"{rollout_id}/{device_id}".encode()).hexdigest()


def stage_members(
    rollout_id: str,
    stages: Sequence[StageSize],
    index: int,
    eligible: Iterable[str],
    already: AbstractSet[str],
) -> tuple[str, ...]:
    """The devices stage ``index`` adds: the top-ranked eligible non-members, as many as it
    takes to bring the member count to the stage's target over ``eligible | already``."""
    pool = set(eligible)
    target = stage_target(stages[index], len(pool | already))
    wanted = target - len(already)
    if wanted <= 0:
        return ()
    return tuple(rank(rollout_id, pool - already)[:wanted])
