"""The agent's configuration: one TOML file, overridable from the environment.

Precedence, highest first: ``EDGE_AGENT_*`` environment variables (``__`` between nested
levels, e.g. ``EDGE_AGENT_MQTT__PORT``), the TOML file, built-in defaults. Models are frozen
and forbid unknown keys, so a typo is an error that names the key instead of a silently
ignored setting. Every failure surfaces as ``ConfigError`` (exit code 78).
"""

from __future__ import annotations

import os
import platform
import re
import socket
import tomllib
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    SettingsConfigDict,
)

from agent.errors import ConfigError
from agent.loop.eventloop import LoopChoice
from agent.telemetry.hardware import detect_hardware_id
from edge_contract.identity import HARDWARE_ID_PATTERN, MAX_TAGS, tag_problem
from edge_contract.topics import DEVICE_ID_PATTERN
from edge_runtime.settings import TomlBackedSettings, format_validation_error, toml_file

DEFAULT_CONFIG_PATH = Path("/etc/edge-agent/agent.toml")
ENV_PREFIX = "EDGE_AGENT_"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsConfig(_Section):
    """TLS towards the broker; a client certificate authenticates the device."""

    ca_file: Path | None = Field(
        default=None, description="CA bundle that signed the broker's certificate."
    )
    cert_file: Path | None = Field(default=None, description="Device client certificate (PEM).")
    key_file: Path | None = Field(default=None, description="Private key of the client cert.")

    @property
    def enabled(self) -> bool:
        return self.ca_file is not None


class MqttConfig(_Section):
    """How to reach the broker and keep the session."""

    host: str = Field(default="localhost", description="Broker host name or address.")
    port: int = Field(default=1883, ge=1, le=65535, description="Broker TCP port.")
    client_id: str | None = Field(
        default=None, description="MQTT client id; the device id when unset."
    )
    username: str | None = Field(default=None, description="Broker user name, if required.")
    password: SecretStr | None = Field(default=None, description="Broker password, if required.")
    keepalive_s: int = Field(default=30, ge=5, le=3600, description="MQTT keepalive, seconds.")
    session_expiry_s: int = Field(
        default=86400,
        ge=0,
        description="How long the broker keeps the session (subscriptions, queued commands) "
        "after a disconnect, seconds.",
    )
    will_delay_s: int = Field(
        default=5,
        ge=0,
        description="Grace period before the broker announces the device offline, seconds; "
        "a reconnect within it suppresses the will.",
    )
    reconnect_min_s: float = Field(
        default=0.5, gt=0, description="First reconnect delay, seconds (doubles, with jitter)."
    )
    reconnect_max_s: float = Field(default=30.0, gt=0, description="Longest reconnect delay, s.")
    connect_timeout_s: float = Field(
        default=10.0, gt=0, description="Time allowed for TCP/TLS connect and CONNACK, seconds."
    )
    max_inflight: int = Field(
        default=20,
        ge=1,
        le=65535,
        description="Most QoS 1 messages awaiting PUBACK at once (capped by the broker's "
        "Receive Maximum).",
    )
    confirm_config_s: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="After a remote config-set, how long the restarted agent has to reach "
        "the broker before the previous config is restored, seconds.",
    )
    tls: TlsConfig = Field(default_factory=TlsConfig, description="TLS settings.")


class TelemetryConfig(_Section):
    """What is measured and how often."""

    interval_s: float = Field(
        default=10.0, ge=0.05, le=86400, description="Seconds between telemetry messages."
    )
    tegrastats_interval_ms: int = Field(
        default=1000, ge=100, description="tegrastats sampling period on Jetson boards, ms."
    )
    thermal_root: Path = Field(
        default=Path("/sys/class/thermal"),
        description="Where the thermal zones are read (thermal_zone*/type and temp).",
    )


class QueueConfig(_Section):
    """The on-disk store-and-forward queue for telemetry and events."""

    max_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=4096,
        description="Cap on queued payload bytes; when full, the oldest messages are dropped "
        "and the drop is counted in the next telemetry message.",
    )
    batch: int = Field(
        default=2048,
        ge=1,
        le=10000,
        description="Rows read ahead per drain step, held in memory while a backlog drains.",
    )


class LogConfig(_Section):
    """Logging output."""

    level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Lowest level logged."
    )
    format: Literal["auto", "json", "console"] = Field(
        default="auto",
        description="json for journald and files, console for a terminal; auto picks by tty.",
    )


class SerialConfig(_Section):
    """The Arduino peripheral on a serial port; disabled unless a port or USB id is set."""

    port: str | None = Field(default=None, description="Serial device, e.g. /dev/ttyACM0.")
    usb_id: str | None = Field(
        default=None,
        pattern=r"^[0-9a-fA-F]{4}:[0-9a-fA-F]{4}$",
        description="Find the board by USB VID:PID in hex (e.g. 2341:0043) instead of a path.",
    )
    baudrate: int = Field(default=115200, gt=0, description="Line speed, bits per second.")
    reset_wait_s: float = Field(
        default=2.0, ge=0, description="Wait after opening: an Arduino resets when opened, s."
    )
    heartbeat_s: float = Field(default=0.5, gt=0, description="Heartbeat period, seconds.")
    handshake_timeout_s: float = Field(default=5.0, gt=0, description="Hello timeout, s.")
    ack_timeout_s: float = Field(default=0.3, gt=0, description="Resend after this, seconds.")
    max_retries: int = Field(default=5, ge=0, description="Resends before giving up a frame.")
    reconnect_min_s: float = Field(default=0.5, gt=0, description="First reconnect delay, s.")
    reconnect_max_s: float = Field(default=10.0, gt=0, description="Longest reconnect delay, s.")
    sensor_period_ms: int = Field(
        default=100, ge=0, le=65535, description="ADC sampling period on the board, ms (0 stops)."
    )
    sensor_mask: int = Field(default=1, ge=0, le=0x3F, description="ADC channels, bit n = An.")
    failsafe_ms: int = Field(
        default=1500,
        ge=100,
        le=65535,
        description="Board drives actuators to their safe state after this long without a "
        "heartbeat, ms.",
    )

    @property
    def enabled(self) -> bool:
        return self.port is not None or self.usb_id is not None


class InferenceConfig(_Section):
    """The local inference service: runtimes, the REST API and model monitoring."""

    rest: bool = Field(
        default=True, description="Serve the TF Serving REST API and /metrics when models load."
    )
    host: str = Field(default="127.0.0.1", description="REST address; loopback by default.")
    port: int = Field(default=8501, ge=0, le=65535, description="REST TCP port (0: any free).")
    unix_socket: Path | None = Field(
        default=None, description="Serve REST on this Unix socket instead of TCP."
    )
    max_body_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1024, description="Largest request body accepted, bytes."
    )
    body_budget_bytes: int | None = Field(
        default=None,
        ge=1024,
        description="Request body bytes all requests in progress may hold together; more is "
        "refused with 503 and Retry-After (default: twice max_body_bytes).",
    )
    # gRPC front ends (agent/inference/grpc_server.py), off unless a port is set.
    grpc_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Serve the gRPC APIs (Open Inference Protocol v2; TF Serving's "
        "PredictionService and ModelService) on this TCP port at `grpc_host` (0: any free); "
        "unset: no gRPC.",
    )
    grpc_host: str = Field(default="127.0.0.1", description="gRPC address; loopback by default.")
    grpc_max_message_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1024,
        le=1024 * 1024 * 1024,
        description="Largest gRPC request message accepted, bytes (larger: RESOURCE_EXHAUSTED, "
        "counted up to twice this; gRPC itself refuses, uncounted, beyond that).",
    )
    grpc_max_concurrent_rpcs: int = Field(
        default=16,
        ge=1,
        le=1024,
        description="gRPC calls in progress at once (more: RESOURCE_EXHAUSTED, counted); "
        "request messages held in memory stay under this times twice grpc_max_message_bytes.",
    )
    workers: int = Field(default=2, ge=1, le=64, description="Inference threads.")
    max_queue: int = Field(
        default=64, ge=1, description="Requests queued or running before new ones are refused."
    )
    providers: list[str] = Field(
        default_factory=lambda: ["CPUExecutionProvider"],
        description="ONNX Runtime execution providers, in order of preference.",
    )
    tensorrt_fp16: bool = Field(
        default=True, description="TensorRT builds fp16 engines (the golden check still holds)."
    )
    tensorrt_cache_dir: Path | None = Field(
        default=None,
        description="Where TensorRT keeps built engines (default: <state_dir>/tensorrt-cache).",
    )
    intra_op_threads: int = Field(default=0, ge=0, description="ORT intra-op threads (0: auto).")
    inter_op_threads: int = Field(default=0, ge=0, description="ORT inter-op threads (0: auto).")
    intra_op_spinning: bool | None = Field(
        default=None,
        description="ORT threads spin between runs (unset: the runtime's default, on); "
        "false needs onnx_thread_pools = 'per-model' (the shared pools always spin).",
    )
    onnx_thread_pools: Literal["shared", "per-model"] = Field(
        default="shared",
        description="shared: all ONNX models run on one pair of thread pools (a swap starts "
        "no threads); per-model: each model its own.",
    )
    tflite_threads: int | None = Field(default=None, ge=1, description="LiteRT threads.")
    tflite_runtime: Literal["auto", "litert", "tflite-runtime"] = Field(
        default="auto", description="TFLite interpreter: auto prefers LiteRT."
    )
    low_confidence_threshold: float | None = Field(
        default=None, ge=0, le=1, description="Capture inputs whose top-1 confidence is below."
    )
    capture_max_bytes: int = Field(
        default=64 * 1024 * 1024, ge=0, description="Cap of the low-confidence capture, bytes."
    )
    drift_event_psi: float = Field(
        default=0.25,
        gt=0,
        le=100,
        description="A model_drift event when a signal's PSI rises above this (default: the "
        "'significant' level); model_drift_recovered once it is back under min(0.1, half of it).",
    )

    @model_validator(mode="after")
    def _spinning_needs_own_pools(self) -> InferenceConfig:
        if self.intra_op_spinning is False and self.onnx_thread_pools == "shared":
            raise ValueError(
                "intra_op_spinning = false needs onnx_thread_pools = 'per-model' "
                "(ONNX Runtime's shared pools always spin)"
            )
        return self

    @model_validator(mode="after")
    def _budget_holds_one_body(self) -> InferenceConfig:
        budget = self.body_budget_bytes
        if budget is not None and budget < self.max_body_bytes:
            raise ValueError(
                f"body_budget_bytes ({budget}) must hold one body of max_body_bytes "
                f"({self.max_body_bytes})"
            )
        return self


class MetricsConfig(_Section):
    """Prometheus ``/metrics`` on a port of its own, with or without models."""

    port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Serve /metrics here (0: any free); unset: only on the inference REST port.",
    )
    host: str = Field(default="127.0.0.1", description="/metrics address; loopback by default.")


class ModelConfig(_Section):
    """One model to load at start; its card lies beside it unless ``card`` says otherwise."""

    path: Path = Field(description="Model file (.onnx or .tflite).")
    name: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$",
        description="Name to serve it under (default: the card's name).",
    )
    card: Path | None = Field(default=None, description="Model card (default: <path>.card.json).")


class PipelineConfig(_Section):
    """Source, pre-processing, model, post-processing and sinks of one pipeline."""

    name: str = Field(
        pattern=r"^[a-z][a-z0-9_-]{0,63}$", description="Pipeline name (events, topics)."
    )
    source: Literal["serial", "mqtt"] = Field(
        default="serial",
        description="serial: sensor frames of `channel`; mqtt: JSON on fleet/<id>/input/<name>.",
    )
    channel: int | None = Field(
        default=None, ge=0, le=5, description="ADC channel of the peripheral (A0..A5)."
    )
    window: int = Field(
        default=1, ge=1, le=4096, description="Serial source: readings per inference."
    )
    queue: int = Field(
        default=4,
        ge=1,
        le=10000,
        description="Inputs waiting for the model; beyond it the oldest is dropped and counted.",
    )
    scale: float = Field(default=1 / 1023, description="Pre-processing: input = raw * scale.")
    model: str = Field(
        default="threshold",
        description="'threshold' (built-in, classes high/low) or the name of a loaded model.",
    )
    threshold: float = Field(default=0.5, description="Class boundary on the scaled input.")
    hysteresis: float = Field(default=0.05, ge=0, description="Dead band around the threshold.")
    min_score: float = Field(
        default=0.0, ge=0, le=1, description="Results below this confidence change nothing."
    )
    top_k: int = Field(default=1, ge=1, le=100, description="Classes reported per result.")
    actuator: int | None = Field(
        default=None, ge=0, le=5, description="Serial sink: PORTB pin to drive."
    )
    on_label: str = Field(default="high", description="Class that switches the actuator on.")
    publish_results: bool = Field(
        default=False, description="MQTT sink: publish each result on fleet/<id>/results."
    )

    @model_validator(mode="after")
    def _check_shape(self) -> PipelineConfig:
        if self.source == "serial" and self.channel is None:
            raise ValueError("a serial pipeline needs `channel`")
        if self.model == "threshold" and self.window != 1:
            raise ValueError("the threshold model takes one reading: window must be 1")
        if self.actuator is None and not self.publish_results and self.source == "serial":
            raise ValueError("the pipeline has no sink: set `actuator` or `publish_results`")
        return self


def _default_device_id() -> str:
    cleaned = re.sub(r"[^a-z0-9_-]", "-", socket.gethostname().lower()).strip("-_")
    return (cleaned or "device")[:64]


def _default_hardware_ids() -> tuple[str, ...]:
    return ("generic", platform.machine().lower() or "unknown")


class DeviceConfig(_Section):
    """What the device says about itself in its status: its hardware id and static tags."""

    hardware_id: str = Field(
        default_factory=detect_hardware_id,
        description="Board kind a release variant names (pi4, pi5, jetson-orin, ...; default: "
        "detected from the device tree or L4T, else generic).",
    )
    tags: dict[str, str] = Field(
        default_factory=dict,
        description='Static tags reported in the status (e.g. {site = "lab"}); the '
        "controller's selectors match them beside the operator's.",
    )

    @field_validator("hardware_id")
    @classmethod
    def _check_hardware_id(cls, value: str) -> str:
        if not HARDWARE_ID_PATTERN.fullmatch(value):
            raise ValueError(f"{value!r} does not match {HARDWARE_ID_PATTERN.pattern}")
        return value

    @field_validator("tags")
    @classmethod
    def _check_tags(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_TAGS:
            raise ValueError(f"{len(value)} tags, at most {MAX_TAGS}")
        for key, text in value.items():
            problem = tag_problem(key, text)
            if problem:
                raise ValueError(problem)
        return value


class OtaHealthConfig(_Section):
    """The health window after a new model is activated: pass it or be rolled back."""

    duration_s: float = Field(default=30.0, gt=0, description="Length of the health window.")
    min_inferences: int = Field(
        default=20, ge=0, description="Inferences the new version must serve before a commit."
    )
    max_error_rate: float = Field(
        default=0.05, ge=0, le=1, description="Largest failed/total ratio that still passes."
    )
    latency_factor: float = Field(
        default=1.5, gt=1, description="Largest p95 latency allowed, times the previous version's."
    )
    max_attempts: int = Field(
        default=3, ge=1, description="Activations (across agent restarts) before a rollback."
    )


class OtaConfig(_Section):
    """Signed over-the-air model updates from the fleet controller (TUF over MQTT)."""

    enabled: bool = Field(default=False, description="Follow the controller's desired state.")
    trusted_root: Path | None = Field(
        default=None,
        description="TUF root.json given at provisioning (any version); needed when enabled.",
    )
    hardware_ids: tuple[str, ...] = Field(
        default_factory=_default_hardware_ids,
        description="Further ids a release variant may name to fit this device, after "
        "[device] hardware_id and before * (default: generic and the CPU arch).",
    )
    max_model_bytes: int = Field(
        default=512 * 1024 * 1024, gt=0, description="Largest model file accepted."
    )
    fetch_window: int = Field(
        default=4, ge=1, le=64, description="Requests (of up to 1 MiB) in flight in a download."
    )
    fetch_timeout_s: float = Field(
        default=10.0, gt=0, description="Wait for one reply before asking again."
    )
    retry_s: float = Field(
        default=30.0, gt=0, description="Wait before retrying a deferred or failed download."
    )
    rekey_interval_s: float = Field(
        default=60.0,
        gt=0,
        description="At most one early TUF refresh per this many seconds for a desired state "
        "whose signature the trusted keys do not verify (a rotated key, or a forgery).",
    )
    clock_floor: datetime = Field(
        default=datetime(2026, 1, 1, tzinfo=UTC),
        description="Before this time the clock counts as unset: updates wait for time sync.",
    )
    health: OtaHealthConfig = Field(
        default_factory=OtaHealthConfig, description="Health window after activation."
    )

    @model_validator(mode="after")
    def _needs_root(self) -> OtaConfig:
        if self.enabled and self.trusted_root is None:
            raise ValueError("ota.enabled needs ota.trusted_root (the provisioned root.json)")
        return self


class AgentConfig(TomlBackedSettings):
    """Effective configuration of one agent."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        case_sensitive=False,
    )

    device_id: str = Field(
        default_factory=_default_device_id,
        description="This device's id in topics: ^[a-z0-9][a-z0-9_-]{0,63}$ (default: hostname).",
    )
    state_dir: Path = Field(
        default=Path("/var/lib/edge-agent"),
        description="Where the agent keeps its queue, counters and models.",
    )
    event_loop: LoopChoice = Field(
        default="auto",
        description="The asyncio event loop: auto takes uvloop where it is installed.",
    )
    mqtt: MqttConfig = Field(default_factory=MqttConfig, description="Broker connection.")
    telemetry: TelemetryConfig = Field(
        default_factory=TelemetryConfig, description="Telemetry sampling."
    )
    queue: QueueConfig = Field(default_factory=QueueConfig, description="Store-and-forward.")
    log: LogConfig = Field(default_factory=LogConfig, description="Logging.")
    serial: SerialConfig = Field(default_factory=SerialConfig, description="Serial peripheral.")
    inference: InferenceConfig = Field(
        default_factory=InferenceConfig, description="Local inference service."
    )
    models: list[ModelConfig] = Field(default_factory=list, description="Models loaded at start.")
    pipelines: list[PipelineConfig] = Field(
        default_factory=list, description="Sensor-to-actuator pipelines."
    )
    ota: OtaConfig = Field(default_factory=OtaConfig, description="Signed model updates.")
    metrics: MetricsConfig = Field(
        default_factory=MetricsConfig, description="Prometheus /metrics on its own port."
    )
    device: DeviceConfig = Field(
        default_factory=DeviceConfig, description="Hardware id and static tags."
    )

    @model_validator(mode="after")
    def _check_pipelines(self) -> AgentConfig:
        names = [p.name for p in self.pipelines]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"pipeline names must be unique: {duplicated}")
        for pipeline in self.pipelines:
            uses_serial = pipeline.source == "serial" or pipeline.actuator is not None
            if uses_serial and not self.serial.enabled:
                raise ValueError(f"pipeline {pipeline.name!r} needs [serial] (port or usb_id)")
        return self

    @field_validator("device_id")
    @classmethod
    def _check_device_id(cls, value: str) -> str:
        if not DEVICE_ID_PATTERN.fullmatch(value):
            raise ValueError(f"{value!r} does not match {DEVICE_ID_PATTERN.pattern}")
        return value

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or self.device_id


def load_config(path: Path | None = None) -> AgentConfig:
    """Load the effective config from ``path`` (or the default file) and the environment.

    Raises:
        ConfigError: the file is missing (when named explicitly), unreadable, not TOML, or
            any value is invalid; the message names the key and the problem.
    """
    toml_path = _resolve_file(path)
    source = str(toml_path) if toml_path else "environment"
    unknown = unknown_env_keys(os.environ)
    if unknown:
        raise ConfigError(
            "; ".join(f"{name}: unknown setting" for name in unknown), source="environment"
        )
    try:
        with toml_file(toml_path):
            return AgentConfig()
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc), source=source) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", source=source) from None


def _resolve_file(path: Path | None) -> Path | None:
    if path is None:
        # The packaged default is optional: a bare board runs on defaults plus environment.
        return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.is_file() else None
    if not path.is_file():
        raise ConfigError("config file does not exist", source=str(path))
    try:
        path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror}", source=str(path)) from None
    return path


def unknown_env_keys(environ: Mapping[str, str]) -> list[str]:
    """``EDGE_AGENT_*`` variables that name no setting: a typo there must not pass silently."""
    return sorted(
        name
        for name in environ
        if name.upper().startswith(ENV_PREFIX)
        and not _names_field(AgentConfig, name[len(ENV_PREFIX) :].lower().split("__"))
    )


def _names_field(model: type[BaseModel], path: list[str]) -> bool:
    field = model.model_fields.get(path[0])
    if field is None:
        return False
    if len(path) == 1:
        return True
    annotation = field.annotation
    return (
        isinstance(annotation, type)
        and issubclass(annotation, BaseModel)
        and _names_field(annotation, path[1:])
    )


def masked_dump(config: AgentConfig) -> dict[str, Any]:
    """The effective config as plain data, with secrets replaced by ``'**********'``."""
    return config.model_dump(mode="json")
