"""What a signed model release says about itself: the ``custom`` fields of its TUF target.

``fleet model publish`` writes them into the targets metadata (signed with the release key);
the agent reads them back from a verified ``Target``: the TUF-free description of a signed
target (path, length, hashes, custom fields) that ``agent.ota.trust`` and
``fleet.release.repo`` hand out instead of python-tuf's ``TargetFile``. Pure: no IO, shared by
both sides.

One release (``NAME@VERSION``) may have several files, its *variants*: each is a target of
its own under ``models/<name>/<version>/`` whose signed custom fields say which boards it is
for (``hardware``: ids, or ``*`` for any), the runtime it needs (``runtime``: ``onnxruntime``
or ``litert``; ``providers``: the ONNX Runtime execution providers it can run on, best
first), its ``precision`` and a ``variant`` name. The agent lists the release's signed
targets and picks the one that fits it best (``agent.ota.variants``); since the fields are
inside the signed targets metadata, a broker cannot steer a device to another variant. A
release published before variants existed is one variant whose runtime follows from its file
name; the fields are left out of a target that does not set them, so such a target reads the
same to an older agent.

Target paths follow ``models/<name>/<version>/<file name>``. The file travels in chunks of
``chunk_size`` bytes, each with its own sha256 in ``chunks``, so a download can be checked
and kept chunk by chunk (resumable, and a bad chunk is fetched again alone); the whole file is
still checked against the target's signed length and sha256 before it is installed.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from edge_contract.card import ModelCard
from edge_contract.errors import UpdateError
from edge_contract.reasons import Reason

CUSTOM_KEY = "edge_model"
DEFAULT_CHUNK_SIZE = 256 * 1024  # bytes; well under mosquitto's default packet limit
MAX_CHUNK_SIZE = 4 * 1024 * 1024
_SHA256 = re.compile(r"[0-9a-f]{64}")
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\.(onnx|tflite)")
_HARDWARE_ID = r"^([a-z0-9][a-z0-9_.-]{0,63}|\*)$"
ANY_HARDWARE = "*"
VARIANT_NAME = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
Runtime = Literal["onnxruntime", "litert"]
Precision = Literal["fp32", "fp16", "int8"]
# The ONNX Runtime execution providers a variant may ask for (the builds the agent supports).
Provider = Literal["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
PROVIDER_ORDER: tuple[Provider, ...] = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "CPUExecutionProvider",
)
# The custom fields a pre-variant release lacks: left out when unset (see custom()).
VARIANT_FIELDS = ("variant", "runtime", "providers", "precision")


@dataclass(frozen=True)
class Target:
    """A signed target as verified TUF metadata describes it, free of python-tuf's types.

    ``hashes`` maps an algorithm name (``sha256``, ``sha512``, ...) to the hex digest; ``custom``
    is the target's custom fields exactly as signed (None when it has none).
    """

    path: str
    length: int
    hashes: Mapping[str, str]
    custom: Mapping[str, Any] | None = field(default=None)

    @classmethod
    def from_data(
        cls,
        path: str,
        data: bytes,
        algorithms: Iterable[str] = ("sha256",),
        custom: Mapping[str, Any] | None = None,
    ) -> Target:
        """The target that describes ``data`` (tests and tools)."""
        hashes = {name: hashlib.new(name, data).hexdigest() for name in algorithms}
        return cls(path, len(data), hashes, custom)


class ModelRelease(BaseModel):
    """The signed facts about one model release (the target's ``custom[CUSTOM_KEY]``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$", description="Model name.")
    version: str = Field(pattern=r"^[0-9A-Za-z][0-9A-Za-z_.+-]{0,63}$", description="Version.")
    release: int = Field(ge=1, description="Release counter of the name: only ever grows.")
    hardware: tuple[Annotated[str, Field(pattern=_HARDWARE_ID)], ...] = Field(
        min_length=1,
        max_length=64,
        description="Hardware ids the variant runs on (any match; ``*``: any hardware).",
    )
    variant: str | None = Field(
        default=None, pattern=VARIANT_NAME, description="Variant name (default: file stem)."
    )
    runtime: Runtime | None = Field(
        default=None, description="Runtime it needs (default: from the file name)."
    )
    providers: tuple[Provider, ...] = Field(
        default=(),
        max_length=len(PROVIDER_ORDER),
        description="ONNX Runtime execution providers it can run on, best first (empty: any).",
    )
    precision: Precision | None = Field(default=None, description="Numeric precision.")
    min_agent_version: str = Field(
        pattern=r"^\d+(\.\d+){0,2}$", description="Oldest agent version that can run it."
    )
    file_name: str = Field(description="File name of the model (.onnx or .tflite).")
    length: int = Field(ge=1, description="File length in bytes (also signed by TUF).")
    chunk_size: int = Field(ge=1024, le=MAX_CHUNK_SIZE, description="Bytes per chunk.")
    chunks: tuple[str, ...] = Field(min_length=1, description="sha256 (hex) of each chunk.")
    card: ModelCard = Field(description="I/O contract, golden check and reference statistics.")

    @field_validator("card", mode="before")
    @classmethod
    def _card_from_json_text(cls, value: object) -> object:
        # custom() carries the card as JSON text: see there. A bad text is a ValueError,
        # which pydantic reports as a validation error of the field.
        if isinstance(value, str | bytes):
            return json.loads(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ModelRelease:
        if not _FILE_NAME.fullmatch(self.file_name):
            raise ValueError(f"file_name {self.file_name!r} is not a plain .onnx/.tflite name")
        if len(self.chunks) != chunk_count(self.length, self.chunk_size):
            raise ValueError(
                f"{len(self.chunks)} chunk hashes for {self.length} bytes "
                f"in chunks of {self.chunk_size}"
            )
        bad = [digest for digest in self.chunks if not _SHA256.fullmatch(digest)]
        if bad:
            raise ValueError(f"chunk hash {bad[0]!r} is not lowercase sha256 hex")
        if len(set(self.providers)) != len(self.providers):
            raise ValueError(f"providers {list(self.providers)} name one twice")
        if self.providers and self.required_runtime != "onnxruntime":
            raise ValueError("providers are ONNX Runtime's: the variant's runtime is litert")
        if self.runtime is not None and self.runtime != _runtime_of(self.file_name):
            raise ValueError(f"runtime {self.runtime} cannot run {self.file_name}")
        if ANY_HARDWARE in self.hardware and len(self.hardware) > 1:
            raise ValueError("hardware '*' means any: it cannot be listed with other ids")
        if (self.card.name, self.card.version) != (self.name, self.version):
            raise ValueError(
                f"card says {self.card.name}@{self.card.version}, "
                f"release says {self.name}@{self.version}"
            )
        return self

    @property
    def target_path(self) -> str:
        return target_path(self.name, self.version, self.file_name)

    @property
    def variant_name(self) -> str:
        """The variant's name: its ``variant`` field, else the file name without suffix."""
        return self.variant or self.file_name.rsplit(".", 1)[0]

    @property
    def required_runtime(self) -> Runtime:
        """The runtime the file needs: the signed ``runtime``, else by its file name."""
        return self.runtime or _runtime_of(self.file_name)

    def chunk_range(self, index: int) -> tuple[int, int]:
        """(offset, length) of chunk ``index``; the last chunk may be short."""
        if not 0 <= index < len(self.chunks):
            raise IndexError(f"chunk {index} of {len(self.chunks)}")
        offset = index * self.chunk_size
        return offset, min(self.chunk_size, self.length - offset)

    def custom(self) -> dict[str, Any]:
        """The ``custom`` mapping of the TUF target that carries this release.

        TUF signs the canonical JSON of its metadata, which has no floats, and the card is
        full of them (golden values, scales, statistics): the card travels as JSON text.
        """
        fields = self.model_dump(mode="json")
        fields["card"] = self.card.model_dump_json()
        for unset in [key for key in VARIANT_FIELDS if fields[key] in (None, [])]:
            del fields[unset]  # a target without variant fields reads as before
        return {CUSTOM_KEY: fields}


def _runtime_of(file_name: str) -> Runtime:
    return "litert" if file_name.endswith(".tflite") else "onnxruntime"


def release_prefix(name: str, version: str) -> str:
    """The target path prefix of every variant of ``name@version``."""
    return f"models/{name}/{version}/"


def target_path(name: str, version: str, file_name: str) -> str:
    """The TUF target path of a model file."""
    return f"models/{name}/{version}/{file_name}"


def chunk_count(length: int, chunk_size: int) -> int:
    return max(1, -(-length // chunk_size))


def chunk_hashes(blocks: Iterable[bytes]) -> list[str]:
    """sha256 hex of each chunk, in order."""
    return [hashlib.sha256(block).hexdigest() for block in blocks]


def release_from_custom(custom: Mapping[str, Any] | None, *, target: str) -> ModelRelease:
    """Parse a verified target's custom fields; ``UpdateError(malformed_release)`` if unusable."""
    if not custom or CUSTOM_KEY not in custom:
        raise UpdateError(Reason.MALFORMED_RELEASE, f"target {target} has no {CUSTOM_KEY} fields")
    try:
        release = ModelRelease.model_validate(custom[CUSTOM_KEY])
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(root)"
        raise UpdateError(
            Reason.MALFORMED_RELEASE, f"target {target}: field {where}: {first['msg']}"
        ) from exc
    if release.target_path != target:
        raise UpdateError(
            Reason.MALFORMED_RELEASE, f"target {target} describes {release.target_path}"
        )
    return release


def version_tuple(version: str) -> tuple[int, ...]:
    """``"1.2"`` -> ``(1, 2, 0)``: agent versions compare numerically."""
    parts = [int(part) for part in re.findall(r"\d+", version)[:3]]
    return tuple(parts + [0] * (3 - len(parts)))
