"""What ``make demo`` shows: a live table on a terminal, a plain line per change when piped.

The demo hands a ``Frame`` (the fleet's summary rows and the lines about the board, the model
and the OTA rollout) to a display once a second. ``LiveDisplay`` redraws a table that fits 80
columns with those lines under it. ``LineDisplay`` is for a pipe or a log file: it prints one
plain line (no escape codes, at most 80 characters, continuation lines indented) for each
change: a device seen, going online or offline, its model versions changing, pin B5 switching,
an OTA step, a note from the demo.
"""

from __future__ import annotations

import sys
import textwrap
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from edge_contract.controller import DeviceSummary
from fleet.view import compact_devices_table, text

WIDTH = 80


@dataclass(frozen=True)
class BoardState:
    """The emulated Arduino: the light level the demo set on A0 and the pin the agent drives."""

    device_id: str
    volts: float
    pin_on: bool

    def line(self) -> str:
        return (
            f"{self.device_id} Arduino: A0 {self.volts:.2f} V -> 'light' "
            f"(on > 2.75 V, off < 2.25 V) -> B5 {'ON' if self.pin_on else 'off'}"
        )


@dataclass(frozen=True)
class Frame:
    """One second of the demo."""

    elapsed: float
    devices: list[DeviceSummary]
    board: BoardState | None
    model_line: str
    model_version: str | None  # None until the model answers
    ota_line: str
    notes: list[str] = field(default_factory=list)


class Display(Protocol):
    def message(self, line: str) -> None: ...

    def update(self, frame: Frame) -> None: ...

    def finish(self, frame: Frame) -> None: ...

    def close(self) -> None: ...


def make_display(stream: TextIO | None = None) -> Display:
    """The live table when ``stream`` (stdout) is a terminal, else a line per change."""
    out = stream or sys.stdout
    if out.isatty():
        return LiveDisplay(Console(file=out))
    return LineDisplay(out)


def _summary(frame: Frame, title: str) -> list[Any]:
    lines = [frame.board.line() if frame.board else "", frame.model_line, frame.ota_line]
    return [compact_devices_table(frame.devices, title=title), *(Text(x) for x in lines if x)]


class LiveDisplay:
    """A table redrawn in place, with the board, model, OTA and note lines under it."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._live: Live | None = None
        self._note = ""

    def message(self, line: str) -> None:
        self._console.print(line, highlight=False, markup=False)

    def update(self, frame: Frame) -> None:
        if frame.notes:
            self._note = frame.notes[-1]
        if self._live is None:
            self._live = Live(console=self._console, auto_refresh=False)
            self._live.start()
        table, *lines = _summary(frame, f"Fleet ({frame.elapsed:.0f}s)")
        styles = ("cyan", "magenta", "green")
        styled = [Text(line.plain, style=style) for line, style in zip(lines, styles, strict=False)]
        note = [Text(self._note, style="yellow")] if self._note else []
        self._live.update(Group(table, *styled, *note), refresh=True)

    def finish(self, frame: Frame) -> None:
        if self._live is not None:
            # The last live frame makes way for the summary (after Ctrl-C it stays instead).
            self._live.transient = True
        self.close()
        self._console.print(Group(*_summary(frame, "Fleet at the end")))

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


class LineDisplay:
    """A plain line per change; see the module docstring."""

    def __init__(self, stream: TextIO) -> None:
        self._out = stream
        self._devices: dict[str, tuple[str, str]] = {}  # id -> (state, models)
        self._pin: bool | None = None
        self._model_version: str | None = None
        self._ota = ""

    def message(self, line: str, elapsed: float | None = None) -> None:
        prefix = "" if elapsed is None else f"[{elapsed:3.0f}s] "
        wrapped = textwrap.wrap(
            prefix + line, WIDTH, subsequent_indent=" " * (len(prefix) + 2), break_on_hyphens=False
        )
        self._out.write("".join(f"{part}\n" for part in wrapped))
        self._out.flush()

    def update(self, frame: Frame) -> None:
        for line in self._changes(frame):
            self.message(line, frame.elapsed)

    def finish(self, frame: Frame) -> None:
        self.update(frame)
        # The table at 80 columns, without colour or any other escape code.
        console = Console(file=self._out, width=WIDTH, color_system=None, force_terminal=False)
        table, *lines = _summary(frame, f"Fleet at the end ({frame.elapsed:.0f}s)")
        console.print(table)
        for line in lines:
            self.message(line.plain)

    def close(self) -> None:
        self._out.flush()

    def _changes(self, frame: Frame) -> list[str]:
        changes = list(frame.notes)
        changes += self._device_changes(frame.devices)
        board = frame.board
        if board is not None and board.pin_on != self._pin:
            self._pin = board.pin_on
            changes.append(
                f"{board.device_id}: pin B5 {'ON' if board.pin_on else 'off'} "
                f"(A0 {board.volts:.2f} V, pipeline 'light')"
            )
        if frame.model_version is not None and frame.model_version != self._model_version:
            self._model_version = frame.model_version
            changes.append(frame.model_line)
        if frame.ota_line and frame.ota_line != self._ota:
            self._ota = frame.ota_line
            changes.append(frame.ota_line)
        return changes

    def _device_changes(self, devices: list[DeviceSummary]) -> list[str]:
        changes = []
        for device in devices:
            device_id = text(device.device_id, 64) or "?"
            state = text(device.state, 16) or "unknown"
            models = ", ".join(
                f"{text(name, 24)} v{text(version, 12)}"
                for name, version in sorted(device.models.items())
            )
            before = self._devices.get(device_id)
            self._devices[device_id] = (state, models)
            if before is None:
                changes.append(f"{device_id}: {state}" + (f", serving {models}" if models else ""))
                continue
            if before[0] != state:
                changes.append(f"{device_id}: {before[0]} -> {state}")
            if before[1] != models:
                changes.append(f"{device_id}: models {before[1] or '-'} -> {models or '-'}")
        return changes
