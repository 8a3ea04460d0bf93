"""Publishing a model file as a signed TUF target with its release facts (``fleet model publish``).

The release facts (``edge_contract.release.ModelRelease``) go into the target's ``custom`` field:
name, version, a release counter that only grows per model name, compatible hardware ids,
the minimum agent version, per-chunk sha256 and the model card (I/O contract, golden check,
reference statistics) read from beside the model file.

A release may carry several files, its variants (``--variant FILE:hardware=pi4,pi5:...``),
each a target of its own with its hardware ids and runtime requirements in its signed custom
fields (``edge_contract.release``); they share the release counter and are signed in one
targets version. ``parse_variant`` reads the CLI's variant spec.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args

from pydantic import ValidationError

from edge_contract.card import ModelCard, card_path_for, parse_card
from edge_contract.errors import CardError, UpdateError
from edge_contract.release import (
    ANY_HARDWARE,
    DEFAULT_CHUNK_SIZE,
    PROVIDER_ORDER,
    ModelRelease,
    Precision,
    Runtime,
    chunk_count,
    release_from_custom,
)
from fleet.errors import PublishRefusedError, ReleaseInputError
from fleet.release.repo import NewTarget, Repository

# Short names the CLI takes for the execution providers.
PROVIDER_ALIASES = {
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


@dataclass(frozen=True)
class VariantSpec:
    """One file of a release and what it needs (unset fields: see ``ModelRelease``)."""

    file: Path
    hardware: tuple[str, ...] = (ANY_HARDWARE,)
    runtime: str | None = None  # checked against Runtime / Precision by ModelRelease
    providers: tuple[str, ...] = field(default=())
    precision: str | None = None
    name: str | None = None


def parse_variant(text: str) -> VariantSpec:
    """``FILE[:hardware=ID,ID][:runtime=onnxruntime|litert][:providers=tensorrt,cuda,cpu]
    [:precision=fp32|fp16|int8][:name=NAME]`` -> ``VariantSpec``; ``ReleaseInputError``
    naming the bad part. Values are checked fully when the release is built."""
    file_part, *parts = text.split(":")
    if not file_part:
        raise ReleaseInputError("variant needs a file before its first ':'", value=text)
    fields: dict[str, str] = {}
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep or not value:
            raise ReleaseInputError(f"variant part {part!r} is not key=value", value=text)
        if key in fields:
            raise ReleaseInputError(f"variant names {key!r} twice", value=text)
        fields[key] = value
    unknown = sorted(set(fields) - {"hardware", "runtime", "providers", "precision", "name"})
    if unknown:
        raise ReleaseInputError(
            f"unknown variant field {unknown[0]!r} (hardware, runtime, providers, precision, name)",
            value=text,
        )
    return VariantSpec(
        file=Path(file_part),
        hardware=tuple(fields["hardware"].split(",")) if "hardware" in fields else (ANY_HARDWARE,),
        runtime=_choice(fields.get("runtime"), get_args(Runtime), "runtime", text),
        providers=tuple(_provider(p, text) for p in fields.get("providers", "").split(",") if p),
        precision=_choice(fields.get("precision"), get_args(Precision), "precision", text),
        name=fields.get("name"),
    )


def _choice(value: str | None, allowed: tuple[str, ...], what: str, text: str) -> str | None:
    # The Literal's values, so the type checker takes the result as the Literal.
    if value is None or value in allowed:
        return value
    raise ReleaseInputError(f"{what} {value!r} is not one of {', '.join(allowed)}", value=text)


def _provider(value: str, text: str) -> str:
    name = PROVIDER_ALIASES.get(value.lower(), value)
    if name not in PROVIDER_ORDER:
        raise ReleaseInputError(
            f"provider {value!r} is not one of {', '.join(PROVIDER_ALIASES)} "
            f"({', '.join(PROVIDER_ORDER)})",
            value=text,
        )
    return name


ChunkProgress = Callable[[int, int], None]
"""Called after each chunk is hashed with (chunks done, chunk count)."""


def publish_model(
    repo: Repository,
    model_file: Path,
    *,
    name: str,
    version: str,
    hardware: list[str] | tuple[str, ...],
    release: int | None = None,
    min_agent_version: str = "0.1",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: ChunkProgress | None = None,
) -> ModelRelease:
    """Add ``model_file`` as ``models/<name>/<version>/<file name>``; returns its release facts.

    Refuses a name@version already published and a release counter not above the highest
    published for ``name`` (default: that highest + 1).
    """
    spec = VariantSpec(file=model_file, hardware=tuple(hardware))
    return publish_release(
        repo,
        name=name,
        version=version,
        variants=[spec],
        release=release,
        min_agent_version=min_agent_version,
        chunk_size=chunk_size,
        progress=progress,
    )[0]


def publish_release(
    repo: Repository,
    *,
    name: str,
    version: str,
    variants: Sequence[VariantSpec],
    release: int | None = None,
    min_agent_version: str = "0.1",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: ChunkProgress | None = None,
) -> list[ModelRelease]:
    """Add each variant's file as a target of ``name@version``, all in one targets version.

    Refuses what ``publish_model`` refuses, no variant, two variants with one file name or
    one variant name, and any variant field ``ModelRelease`` refuses (naming the file).
    """
    if not variants:
        raise ReleaseInputError("a release needs at least one file", value=f"{name}@{version}")
    counter = _next_release(repo, name, version, release)
    built = [
        _variant_release(spec, name, version, counter, min_agent_version, chunk_size, progress)
        for spec in variants
    ]
    _refuse_duplicates([model_release for model_release, _ in built], f"{name}@{version}")
    repo.add_targets(
        [
            NewTarget(model_release.target_path, spec.file, model_release.custom(), digest)
            for (model_release, digest), spec in zip(built, variants, strict=True)
        ]
    )
    return [model_release for model_release, _ in built]


def _variant_release(
    spec: VariantSpec,
    name: str,
    version: str,
    counter: int,
    min_agent_version: str,
    chunk_size: int,
    progress: ChunkProgress | None,
) -> tuple[ModelRelease, str]:
    if not spec.file.is_file():
        raise ReleaseInputError("no model file", value=str(spec.file))
    card = _card_as(load_model_card(spec.file), name, version)
    chunks, file_sha256 = hash_chunks(spec.file, chunk_size, progress)
    try:
        model_release = ModelRelease.model_validate(
            {
                "name": name,
                "version": version,
                "release": counter,
                "hardware": spec.hardware,
                "variant": spec.name,
                "runtime": spec.runtime,
                "providers": spec.providers,
                "precision": spec.precision,
                "min_agent_version": min_agent_version,
                "file_name": spec.file.name,
                "length": spec.file.stat().st_size,
                "chunk_size": chunk_size,
                "chunks": tuple(chunks),
                "card": card,
            }
        )
    except ValidationError as exc:
        raise ReleaseInputError(_first_problem(exc), value=str(spec.file)) from exc
    return model_release, file_sha256


def _refuse_duplicates(releases: list[ModelRelease], what: str) -> None:
    for label, values in (
        ("file name", [r.file_name for r in releases]),
        ("variant name", [r.variant_name for r in releases]),
    ):
        twice = sorted({v for v in values if values.count(v) > 1})
        if twice:
            raise ReleaseInputError(f"two variants with {label} {twice[0]!r}", value=what)


def load_model_card(model_file: Path) -> ModelCard:
    """The card beside ``model_file`` (``<file>.card.json``)."""
    path = card_path_for(model_file)
    try:
        text = path.read_bytes()
    except OSError as exc:
        problem = f"cannot read model card ({exc.strerror}): {path}"
        raise ReleaseInputError("unusable model card", value=problem) from exc
    try:
        return parse_card(text, source=str(path))
    except CardError as exc:
        raise ReleaseInputError("unusable model card", value=str(exc)) from exc


def published_releases(repo: Repository, name: str) -> list[ModelRelease]:
    """Every release of model ``name`` in the repository's targets (other targets ignored)."""
    found = []
    for path, target in repo.targets().items():
        try:
            model_release = release_from_custom(target.custom, target=path)
        except UpdateError:
            continue  # not a model release: not ours to judge here
        if model_release.name == name:
            found.append(model_release)
    return found


def hash_chunks(
    model_file: Path, chunk_size: int, progress: ChunkProgress | None = None
) -> tuple[list[str], str]:
    """sha256 of each ``chunk_size`` block of the file, and of the whole file."""
    total = chunk_count(model_file.stat().st_size, chunk_size)
    whole = hashlib.sha256()
    chunks: list[str] = []
    with model_file.open("rb") as reader:
        while block := reader.read(chunk_size):
            whole.update(block)
            chunks.append(hashlib.sha256(block).hexdigest())
            if progress is not None:
                progress(len(chunks), total)
    if not chunks:  # an empty file: ModelRelease refuses length 0 with a clear message
        chunks.append(hashlib.sha256(b"").hexdigest())
    return chunks, whole.hexdigest()


def _next_release(repo: Repository, name: str, version: str, requested: int | None) -> int:
    existing = published_releases(repo, name)
    if any(model_release.version == version for model_release in existing):
        raise PublishRefusedError("already published", model=f"{name}@{version}")
    highest = max((model_release.release for model_release in existing), default=0)
    if requested is None:
        return highest + 1
    if requested <= highest:
        raise PublishRefusedError(
            f"release counter {requested} is not above the highest published ({highest})",
            model=f"{name}@{version}",
        )
    return requested


def _card_as(card: ModelCard, name: str, version: str) -> ModelCard:
    """The card under the release's name and version (the file is the same model)."""
    if (card.name, card.version) == (name, version):
        return card
    try:
        return ModelCard.model_validate(card.model_dump() | {"name": name, "version": version})
    except ValidationError as exc:
        raise ReleaseInputError(_first_problem(exc), value=f"{name}@{version}") from exc


def _first_problem(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "(top level)"
    return f"field {where}: {first['msg']}"
