"""The fleet controller's and CLI's configuration: TOML file, ``FLEET_*`` environment, options.

Precedence, highest first: command-line options, ``FLEET_*`` variables (``__`` between levels,
e.g. ``FLEET_BROKER``, ``FLEET_DB``, ``FLEET_STORE__URL``, ``FLEET_RETENTION__MAX_AGE_S``), the
TOML file (``--config`` or ``/etc/fleet/fleet.toml`` when present), defaults.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    SettingsConfigDict,
)

from edge_runtime.settings import TomlBackedSettings, format_validation_error, toml_file
from fleet.errors import BrokerUrlError, FleetConfigError
from fleet.operators import NAME_PATTERN

DEFAULT_CONFIG_PATH = Path("/etc/fleet/fleet.toml")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsOptions(_Section):
    """TLS towards the broker."""

    ca_file: Path | None = Field(default=None, description="CA that signed the broker cert.")
    cert_file: Path | None = Field(default=None, description="Client certificate (PEM).")
    key_file: Path | None = Field(default=None, description="Client certificate key (PEM).")


class RetentionOptions(_Section):
    """History kept by the controller."""

    max_age_s: float = Field(default=7 * 86400, gt=0, description="Oldest telemetry kept, s.")
    max_telemetry_rows: int = Field(default=10000, ge=1, description="Telemetry rows per device.")
    max_event_rows: int = Field(default=1000, ge=1, description="Event rows per device.")


class OtaOptions(_Section):
    """Signed model releases served to the devices (``fleet serve``)."""

    repo: Path | None = Field(
        default=None, description="TUF repository dir (`fleet keys init`); unset: no OTA."
    )
    timestamp_refresh_s: float = Field(
        default=3600.0, gt=0, description="How often the timestamp metadata is re-signed."
    )
    timestamp_expiry_s: float = Field(
        default=86400.0, gt=0, description="Lifetime of each timestamp (freeze protection)."
    )
    desired_expiry_s: float = Field(
        default=7 * 86400.0, gt=0, description="Lifetime of a signed desired-state message."
    )


class RolloutOptions(_Section):
    """Staged rollouts (``fleet rollout``), driven by ``fleet serve`` when OTA is on."""

    tick_s: float = Field(
        default=5.0, gt=0, le=3600, description="Seconds between two steps of every rollout."
    )


class OperatorOptions(_Section):
    """Who this CLI signs mutating requests as; how strict the controller is about them."""

    name: str | None = Field(
        default=None,
        pattern=NAME_PATTERN,
        description="Operator name registered with `fleet operators add` (optional: the key "
        "identifies the operator).",
    )
    key_file: Path | None = Field(
        default=None, description="Ed25519 private key (PEM) from `fleet operators keygen`."
    )
    request_window_s: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="Controller: a signed request older or newer than this is refused, s.",
    )


class HttpOptions(_Section):
    """``fleet serve``'s HTTP side: the REST API, the dashboard and ``/metrics`` (fleet.http)."""

    enabled: bool = Field(default=True, description="Serve HTTP at all.")
    listen: str = Field(
        default="127.0.0.1:8080",
        pattern=r"^[^\s]{1,253}:\d{1,5}$",
        description="HOST:PORT to serve on (port 0: any free port, logged as http.listening). "
        "Any address but loopback needs tokens_file.",
    )
    tokens_file: Path | None = Field(
        default=None,
        description="Bearer tokens, one per line `ROLE NAME sha256:HEX` (`fleet http token`). "
        "Without it: loopback only, read only.",
    )
    max_body_bytes: int = Field(
        default=65536, ge=1024, le=16 * 1024 * 1024, description="Largest request body."
    )
    metrics_device_limit: int = Field(
        default=500,
        ge=0,
        le=100000,
        description="Devices with per-device gauges on /metrics (the most recently seen).",
    )


class StoreOptions(_Section):
    """Where the controller database lives when it is not the SQLite file ``db``."""

    url: str | None = Field(
        default=None,
        description="Database URL, overriding `db`: postgresql+psycopg://user:password@host/"
        "fleet (the postgresql extra) or sqlite:///path.",
    )

    @model_validator(mode="before")
    @classmethod
    def _hide_password(cls, data: object) -> object:
        """An unsupported URL is reported as given, its password masked."""
        if isinstance(data, dict) and isinstance(data.get("url"), str):
            from fleet.db.engine import hide_password, parse_url  # noqa: PLC0415

            try:
                parse_url(data["url"])
            except ValueError:
                return {**data, "url": hide_password(data["url"])}
        return data

    @field_validator("url")
    @classmethod
    def _supported(cls, url: str | None) -> str | None:
        if url is None:
            return None
        from fleet.db.engine import parse_url  # noqa: PLC0415  # SQLAlchemy only when set

        parse_url(url)  # DatabaseUrlError is a ValueError: reported naming store.url
        return url


def _default_db() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "fleet" / "fleet.sqlite3"


class FleetConfig(TomlBackedSettings):
    """Effective fleet configuration."""

    model_config = SettingsConfigDict(
        env_prefix="FLEET_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    broker: str = Field(default="mqtt://127.0.0.1:1883", description="mqtt:// or mqtts:// URL.")
    db: Path = Field(default_factory=_default_db, description="Controller database (SQLite).")
    store: StoreOptions = Field(
        default_factory=StoreOptions, description="Controller database on a server (URL)."
    )
    client_id: str = Field(default="fleet-controller", description="Controller's MQTT client id.")
    rpc_timeout_s: float = Field(default=5.0, gt=0, description="CLI wait for the controller.")
    tls: TlsOptions = Field(default_factory=TlsOptions, description="Broker TLS.")
    retention: RetentionOptions = Field(
        default_factory=RetentionOptions, description="History retention."
    )
    ota: OtaOptions = Field(default_factory=OtaOptions, description="Signed model releases.")
    rollouts: RolloutOptions = Field(default_factory=RolloutOptions, description="Staged rollouts.")
    http: HttpOptions = Field(default_factory=HttpOptions, description="REST API, dashboard.")
    operator: OperatorOptions = Field(
        default_factory=OperatorOptions, description="Operator key for signed requests."
    )


def database(config: FleetConfig) -> Path | str:
    """The controller database: ``[store] url`` when set, else the SQLite file ``db``."""
    return config.store.url or config.db


def load_fleet_config(path: Path | None = None, **overrides: object) -> FleetConfig:
    """Load the config; ``overrides`` (non-None only) come from command-line options.

    Raises:
        FleetConfigError: missing file, bad TOML, or an invalid value (named in the message).
    """
    if path is not None and not path.is_file():
        raise FleetConfigError(f"{path}: config file does not exist")
    config_file = path or (DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.is_file() else None)
    try:
        given: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
        with toml_file(config_file):
            config = FleetConfig(**given)
    except ValidationError as exc:
        raise FleetConfigError(
            f"{config_file or 'fleet config'}: {format_validation_error(exc)}"
        ) from None
    except ValueError as exc:  # tomllib.TOMLDecodeError
        raise FleetConfigError(f"{config_file}: not valid TOML: {exc}") from None
    parse_broker_url(config.broker)
    return config


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool


def parse_broker_url(url: str) -> BrokerAddress:
    """``mqtt://host[:port]`` (default 1883) or ``mqtts://host[:port]`` (default 8883)."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise BrokerUrlError(url, "scheme must be mqtt:// or mqtts://")
    if not parts.hostname:
        raise BrokerUrlError(url, "no host")
    try:
        port = parts.port
    except ValueError:
        raise BrokerUrlError(url, "port must be a number from 1 to 65535") from None
    tls = parts.scheme == "mqtts"
    return BrokerAddress(parts.hostname, port or (8883 if tls else 1883), tls)
