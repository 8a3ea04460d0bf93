"""Remote changes to the agent's config file (``config-set``) and their rollback.

A patch (a JSON merge patch, RFC 7396: objects merge, ``null`` removes a key, anything else
replaces) is applied to the TOML the agent was started with, and the result is validated by
the agent's own config models (``load_config``, the same check as at start) before anything
is replaced. A valid one is written atomically (``agent.ota.fsutil``: temporary file in the
same directory, fsync, rename, fsync of the directory), with the config file's permission
bits, as is every file written beside it; the file it replaces is kept as
``<config>.previous`` and a ``<config>.pending`` marker says that the new one is not yet
confirmed. The agent restarts to apply it; on start, a pending config is confirmed once the
MQTT link is up, and restored from ``.previous`` when the link does not come up within the
deadline (or when the new file does not even load), so a change that cuts the device off
undoes itself.

File IO only (no MQTT, no loop): the daemon calls these off the loop.
"""

from __future__ import annotations

import json
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config import AgentConfig, load_config
from agent.errors import CommandError, ConfigError, StoreError
from agent.ota.fsutil import atomic_write_bytes, fsync_dir

# A patch names a few keys; the dispatcher's body cap bounds it before it gets here.
MAX_PATCH_KEYS = 256
# How long a restarted agent has to reach the broker before a pending config is undone.
CONFIRM_DEADLINE_S = 60.0


@dataclass(frozen=True)
class ConfigFiles:
    """The config file and its companions: ``.previous`` and the ``.pending`` marker."""

    path: Path

    @property
    def previous(self) -> Path:
        return self.path.with_name(self.path.name + ".previous")

    @property
    def pending(self) -> Path:
        return self.path.with_name(self.path.name + ".pending")


def merge_patch(base: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``patch`` applied as a JSON merge patch (neither is modified)."""
    merged = dict(base)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_patch(merged[key], value)
        else:
            merged[key] = value
    return merged


def dump_toml(data: Mapping[str, Any]) -> str:
    """TOML text of ``data`` (tables, arrays of tables, scalars and arrays of scalars).

    Raises:
        CommandError: a value TOML cannot hold (null inside an array, a NaN, a mixed array).
    """
    lines: list[str] = []
    _dump_table(data, [], lines)
    text = "\n".join(lines).strip() + "\n"
    # The writer is small; the reader is the standard one: check we wrote what we meant.
    if tomllib.loads(text) != _plain(data):
        raise CommandError("config patch holds values TOML cannot represent")
    return text


def _plain(data: Any) -> Any:
    if isinstance(data, Mapping):
        return {k: _plain(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [_plain(v) for v in data]
    return data


def _is_table(value: Any) -> bool:
    return isinstance(value, Mapping)


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(_is_table(v) for v in value)


def _dump_table(table: Mapping[str, Any], path: list[str], lines: list[str]) -> None:
    for key, value in table.items():
        if not (_is_table(value) or _is_table_array(value)):
            lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in table.items():
        if _is_table(value):
            lines.extend(["", f"[{'.'.join(_key(k) for k in [*path, key])}]"])
            _dump_table(value, [*path, key], lines)
        elif _is_table_array(value):
            for item in value:
                lines.extend(["", f"[[{'.'.join(_key(k) for k in [*path, key])}]]"])
                _dump_table(item, [*path, key], lines)


def _key(key: str) -> str:
    bare = key and all(c.isascii() and (c.isalnum() or c in "-_") for c in key)
    return key if bare else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CommandError(f"config value is not a finite number: {value!r}")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string (ASCII, escaped) is a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise CommandError(f"config value TOML cannot hold: {type(value).__name__}")


def read_toml(path: Path) -> dict[str, Any]:
    """The config file's data (an empty table for an empty file)."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CommandError(f"cannot read the config file {path}: {exc}") from None


def count_keys(data: Any) -> int:
    if isinstance(data, Mapping):
        return len(data) + sum(count_keys(v) for v in data.values())
    if isinstance(data, list):
        return sum(count_keys(v) for v in data)
    return 0


def prepare(files: ConfigFiles, patch: Mapping[str, Any]) -> tuple[str, AgentConfig]:
    """The new file's text and the config it gives, validated; nothing is written.

    Raises:
        CommandError: the patch is empty or too large, or the result is not a valid config
            (the message names each key at fault, as at start).
    """
    if not patch:
        raise CommandError("empty config patch: nothing to change")
    if count_keys(patch) > MAX_PATCH_KEYS:
        raise CommandError(f"config patch names more than {MAX_PATCH_KEYS} keys")
    text = dump_toml(merge_patch(read_toml(files.path), patch))
    candidate = files.path.with_name(f".{files.path.name}.check-{os.getpid()}")
    try:
        _write(files, candidate, text)
        config = load_config(candidate)
    except ConfigError as exc:
        raise CommandError(f"invalid config, nothing changed: {exc}") from None
    except (OSError, StoreError) as exc:
        raise _unwritable(files, exc) from None
    finally:
        candidate.unlink(missing_ok=True)
    return text, config


def install(files: ConfigFiles, text: str) -> None:
    """Replace the config with ``text``: the old one kept as ``.previous``, marked pending.

    Raises:
        CommandError: the directory is not writable (the config is then unchanged, or at
            worst ``.previous`` and the marker exist beside it: the rollback undoes that).
    """
    try:
        _write(files, files.previous, files.path.read_text(encoding="utf-8"))
        _write(files, files.pending, "")
        _write(files, files.path, text)
    except (OSError, StoreError) as exc:
        raise _unwritable(files, exc) from None


def _unwritable(files: ConfigFiles, exc: OSError | StoreError) -> CommandError:
    # The shipped unit has ProtectSystem=strict: /etc/edge-agent is read-only unless the
    # unit makes it writable (docs/remote-operations.md).
    where = files.path.parent
    # fsutil's StoreError wraps the OSError: name the OS's reason, as for a bare one.
    cause = exc if isinstance(exc, OSError) else exc.__cause__
    reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(exc)
    return CommandError(f"cannot write beside {files.path} ({reason}): is {where} writable?")


def confirm(files: ConfigFiles) -> bool:
    """The running config works: drop the pending marker. True when there was one."""
    if not files.pending.exists():
        return False
    files.pending.unlink(missing_ok=True)
    fsync_dir(files.path.parent)
    return True


def roll_back(files: ConfigFiles) -> bool:
    """Restore ``.previous`` over a pending config. False when nothing was pending."""
    if not files.pending.exists() or not files.previous.exists():
        return False
    _write(files, files.path, files.previous.read_text(encoding="utf-8"))
    files.pending.unlink(missing_ok=True)
    fsync_dir(files.path.parent)
    return True


def _write(files: ConfigFiles, path: Path, text: str) -> None:
    """``text`` to ``path`` atomically, with the config file's permission bits.

    Its companions get them too: ``.previous`` is the config as it was. With no config file
    left (a roll-back after it was deleted), ``fsutil``'s default: ``0600``.
    """
    try:
        mode: int | None = files.path.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = None
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode)
