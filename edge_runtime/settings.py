"""Settings read from one TOML file and the environment, shared by the agent and the controller.

``TomlBackedSettings`` takes init values, then the environment, then the TOML file that the
enclosing ``toml_file`` block names; ``format_validation_error`` turns pydantic's errors into
one line per problem. Each side's configuration (``agent.config``, ``fleet.config``) builds on
these and raises its own config error (exit 78).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from pathlib import Path

from pydantic import ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, TomlConfigSettingsSource

_toml_path: contextvars.ContextVar[Path | None] = contextvars.ContextVar("toml_path", default=None)


class TomlBackedSettings(BaseSettings):
    """Settings from init values, then the environment, then the TOML file of ``toml_file``."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _toml_path.get()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)


@contextlib.contextmanager
def toml_file(path: Path | None) -> Iterator[None]:
    """Within the block, ``TomlBackedSettings`` read ``path`` (None: no file)."""
    token = _toml_path.set(path)
    try:
        yield
    finally:
        _toml_path.reset(token)


def format_validation_error(exc: ValidationError) -> str:
    """One line per problem: ``key.path: what is wrong (got VALUE)``."""
    lines = []
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown key")
            continue
        got = err.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{key}: {err['msg']}{shown}")
    return "; ".join(lines)
