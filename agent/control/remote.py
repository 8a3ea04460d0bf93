"""Remote operations on the agent itself: ``config-get``, ``config-set``, ``logs``,
``restart`` (and ``health-check``, the ``health`` report under the name operators ask for).

``config-set`` and ``restart`` change the device: the agent trusts what the broker lets
through on its own ``cmd`` topic, so who may publish there is the broker's ACL to decide
(docs/remote-operations.md). Both answer first and then ask the daemon to restart:
it stops gracefully and the process re-executes itself (the same pid: under systemd the
unit stays active), so a new config is read the way it is at boot. A config written by
``config-set`` stays pending until the restarted agent reaches the broker, and is rolled
back when it does not within ``CONFIRM_DEADLINE_S`` (``agent.control.configfile``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import structlog
from pydantic import BaseModel, ConfigDict, Field, JsonValue

from agent.config import AgentConfig, masked_dump
from agent.control import configfile
from agent.control.commands import CommandDispatcher, NoArguments
from agent.errors import CommandError
from edge_contract.replies import ConfigGetReply, ConfigSetReply, LogsReply, RestartReply
from edge_runtime.log import RECENT, LogRing
from edge_runtime.mqtt.link import MqttLink

log = structlog.get_logger("agent.control.remote")

# A logs reply stays well under the broker's packet limit whatever the lines hold.
MAX_LOGS_BYTES = 128 * 1024


class LogsRequest(BaseModel):
    """``logs``: how many of the newest lines."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lines: Annotated[int, Field(ge=1, le=1000)] = 100


class ConfigSetRequest(BaseModel):
    """``config-set``: a JSON merge patch of the config file (``null`` removes a key)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    patch: dict[str, JsonValue]


def newest_within(lines: list[str], budget: int) -> list[str]:
    """The newest of ``lines`` (oldest first) whose UTF-8 size stays within ``budget``."""
    kept: list[str] = []
    for line in reversed(lines):
        budget -= len(line.encode("utf-8")) + 4  # quotes, comma, some escaping
        if budget < 0:
            break
        kept.append(line)
    return kept[::-1]


class RemoteOps:
    """The handlers; ``restart`` is the daemon's way to stop and start again."""

    def __init__(
        self,
        config: AgentConfig,
        config_path: Path | None,
        restart: Callable[[str], None],
        *,
        ring: LogRing = RECENT,
    ) -> None:
        self._config = config
        self._files = configfile.ConfigFiles(config_path) if config_path else None
        self._restart = restart
        self._ring = ring

    def register(self, commands: CommandDispatcher) -> None:
        commands.register("config-get", self.config_get, NoArguments)
        commands.register("config-set", self.config_set, ConfigSetRequest, mutating=True)
        commands.register("logs", self.logs, LogsRequest)
        commands.register("restart", self.restart, NoArguments, mutating=True)

    async def config_get(self, _request: NoArguments) -> ConfigGetReply:
        files = self._files
        return ConfigGetReply(
            config=masked_dump(self._config),
            path=str(files.path) if files else None,
            pending=files is not None and files.pending.exists(),
        )

    async def config_set(self, request: ConfigSetRequest) -> ConfigSetReply:
        files = self._files
        if files is None:
            raise CommandError("the agent was started without a config file: nothing to patch")
        if files.pending.exists():
            raise CommandError("a config change is still pending confirmation: try again")
        text, _config = await asyncio.to_thread(configfile.prepare, files, request.patch)
        await asyncio.to_thread(configfile.install, files, text)
        log.info("config.changed", path=str(files.path), keys=sorted(request.patch))
        self._restart("config-set")
        return ConfigSetReply(path=str(files.path), previous=str(files.previous), restarting=True)

    async def logs(self, request: LogsRequest) -> LogsReply:
        return LogsReply(lines=newest_within(self._ring.last(request.lines), MAX_LOGS_BYTES))

    async def restart(self, _request: NoArguments) -> RestartReply:
        self._restart("restart command")
        return RestartReply(restarting=True)

    async def confirm_pending(self, link: MqttLink, deadline_s: float) -> None:
        """After a config-set restart: confirm once connected, roll back if not in time."""
        files = self._files
        if files is None or not files.pending.exists():
            return
        try:
            async with asyncio.timeout(deadline_s):
                await link.wait_connected()
        except TimeoutError:
            if await asyncio.to_thread(configfile.roll_back, files):
                log.error("config.rolled_back", path=str(files.path), deadline_s=deadline_s)
                self._restart("config rollback")
            else:  # no .previous to go back to: restarting would only repeat this
                log.error("config.rollback_impossible", path=str(files.path))
            return
        await asyncio.to_thread(configfile.confirm, files)
        log.info("config.confirmed", path=str(files.path))
