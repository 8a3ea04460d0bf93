"""The process's event loop: uvloop where it is installed, asyncio's own loop otherwise.

Why uvloop: a model run hands its result back to the loop from an inference thread, and on a
board that hop is part of every request's latency. asyncio's loop handles the wake-up in
Python (selector bookkeeping, reading the self-pipe, a handle per callback); uvloop does the
same in C, and the models benchmark measured a bare thread hop back to the loop as cheaper
with uvloop than with asyncio's loop, against a bare ``session.run`` of the large reference
model (docs/benchmarks.md, "Models: serving overhead, int8 against fp32, hot swap").

uvloop ships with the ``inference`` extra; without it (a board with no wheel for it, the
tflite-runtime environment) the agent runs on asyncio's loop and says so in its log. The
``event_loop`` setting (``edge-agent serve --event-loop``) forces either one.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar, get_args

from agent.errors import ConfigError

T = TypeVar("T")
LoopChoice = Literal["auto", "uvloop", "asyncio"]
LOOP_CHOICES: tuple[str, ...] = get_args(LoopChoice)

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def loop_factory(choice: str = "auto") -> tuple[str, LoopFactory]:
    """The name and the factory of the loop ``choice`` stands for.

    ``ConfigError`` for a choice that is not one of ``LOOP_CHOICES``, or for ``uvloop``
    where it is not installed.
    """
    if choice not in LOOP_CHOICES:
        raise ConfigError(f"event_loop must be one of {', '.join(LOOP_CHOICES)}, got {choice!r}")
    if choice == "asyncio":
        return "asyncio", asyncio.new_event_loop
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError as exc:
        if choice == "uvloop":
            raise ConfigError(f"event_loop is 'uvloop', not installed here ({exc})") from exc
        return "asyncio", asyncio.new_event_loop
    factory: LoopFactory = uvloop.new_event_loop
    return "uvloop", factory


async def off_loop_if(large: bool, work: Callable[..., T], *args: Any) -> T:
    """``work(*args)``: on a worker thread when ``large``, on the loop otherwise.

    For a parse or a conversion whose cost grows with a request: a large one would hold the
    loop, and every other request with it, while a small one costs less than the two thread
    hops it would take.
    """
    if large:
        return await asyncio.to_thread(work, *args)
    return work(*args)


def run(main: Coroutine[Any, Any, T], choice: str = "auto") -> T:
    """``asyncio.run(main)`` on the loop ``choice`` stands for (see ``loop_factory``)."""
    try:
        name, factory = loop_factory(choice)
    except ConfigError:
        main.close()  # never awaited: close it so Python does not warn about it
        raise
    # Imported here: agent.config imports this module for LoopChoice, and check-config
    # should not pay for the logging stack.
    import structlog  # noqa: PLC0415

    structlog.get_logger("agent.loop.eventloop").info(
        "event_loop.selected", loop=name, setting=choice
    )
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
