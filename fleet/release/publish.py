"""Publishing a model file as a signed TUF target with its release facts (``fleet model publish``).

The release facts (``edge_contract.release.ModelRelease``) go into the target's ``custom`` field:
name, version, a release counter that only grows per model name, compatible hardware ids,
the minimum agent version, per-chunk sha256 and the model card (I/O contract, golden check,
reference statistics) read from beside the model file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from edge_contract.card import ModelCard, card_path_for, parse_card
from edge_contract.errors import CardError, UpdateError
from edge_contract.release import DEFAULT_CHUNK_SIZE, ModelRelease, chunk_count, release_from_custom
from fleet.errors import PublishRefusedError, ReleaseInputError
from fleet.release.repo import Repository

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
    if not model_file.is_file():
        raise ReleaseInputError("no model file", value=str(model_file))
    card = _card_as(load_model_card(model_file), name, version)
    counter = _next_release(repo, name, version, release)
    length = model_file.stat().st_size
    chunks, file_sha256 = hash_chunks(model_file, chunk_size, progress)
    try:
        model_release = ModelRelease(
            name=name,
            version=version,
            release=counter,
            hardware=tuple(hardware),
            min_agent_version=min_agent_version,
            file_name=model_file.name,
            length=length,
            chunk_size=chunk_size,
            chunks=tuple(chunks),
            card=card,
        )
    except ValidationError as exc:
        raise ReleaseInputError(_first_problem(exc), value=f"{name}@{version}") from exc
    repo.add_target(
        model_release.target_path,
        model_file,
        model_release.custom(),
        expected_sha256=file_sha256,
    )
    return model_release


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
