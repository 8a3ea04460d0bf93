"""``fleet keys ...`` and ``fleet model publish``: the release side of signed OTA delivery.

``fleet.cli`` registers these: ``app.add_typer(keys_app, name="keys")`` and
``register_model_commands(model_app)``. Tables for people, ``--json`` for scripts; errors
are one line on stderr with the error's exit code (78 for configuration, 65 for a refused
release), never a traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from edge_contract.release import ANY_HARDWARE, DEFAULT_CHUNK_SIZE, ModelRelease, Target
from fleet.errors import FleetError, ReleaseInputError, ReleaseRepositoryError
from fleet.release.publish import ChunkProgress, VariantSpec, parse_variant, publish_release
from fleet.release.repo import TOP_LEVEL_ROLES, Repository, repository_lock

# Below this many chunks hashing is instant: a progress bar would only flicker.
_PROGRESS_MIN_CHUNKS = 16
_T = TypeVar("_T")

keys_app = typer.Typer(
    no_args_is_help=True, help="Signing keys of the TUF release repository (init, rotate)."
)

RepoOpt = Annotated[Path, typer.Option("--repo", help="TUF repository directory")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]


@keys_app.command("init")
def keys_init(
    repo: RepoOpt,
    root_keys: Annotated[int, typer.Option("--root-keys", help="number of root keys")] = 1,
    root_threshold: Annotated[
        int, typer.Option("--root-threshold", help="root signatures needed")
    ] = 1,
    json_out: JsonOpt = False,
) -> None:
    """Create a TUF repository: keys for every role, version 1 of its metadata."""
    repository = _run(
        lambda: Repository.init(repo, root_keys=root_keys, root_threshold=root_threshold)
    )
    summary = {"repo": str(repository.directory), **_keys_summary(repository)}
    summary["trusted_root"] = str(repository.root_path(1))
    if json_out:
        _print_json(summary)
        return
    console = Console()
    console.print(_keys_table(repository))
    console.print(
        f"device trusted root: {escape(summary['trusted_root'])}\n"
        f"private keys (owner only): {escape(str(repository.keys_dir))}; "
        "keep the root keys offline",
        highlight=False,
    )


@keys_app.command("rotate")
def keys_rotate(
    role: Annotated[str, typer.Argument(help=f"role: {', '.join(TOP_LEVEL_ROLES)}")],
    repo: RepoOpt,
    json_out: JsonOpt = False,
) -> None:
    """Replace a role's keys; writes a root version signed by the old and the new root keys."""
    with _locked(repo):
        repository = _run(lambda: Repository.open(repo))
        root_version = _run(lambda: repository.rotate(role))
    if json_out:
        _print_json({"role": role, "root_version": root_version, **_keys_summary(repository)})
        return
    keyids = ", ".join(repository.keyids(role))
    Console().print(
        f"root version {root_version}: {role} key(s) now {keyids}\n"
        f"new root: {escape(str(repository.root_path(root_version)))}",
        highlight=False,
    )


def model_publish(
    model: Annotated[
        str,
        typer.Argument(
            help="model file (.onnx or .tflite, card beside it) with --name/--version; "
            "or NAME@VERSION with one --variant per file"
        ),
    ],
    repo: RepoOpt,
    name: Annotated[str | None, typer.Option("--name", help="model name")] = None,
    version: Annotated[str | None, typer.Option("--version", help="model version")] = None,
    hardware: Annotated[
        list[str] | None,
        typer.Option("--hardware", help="single file: hardware id it runs on (repeat; default *)"),
    ] = None,
    variant: Annotated[
        list[str] | None,
        typer.Option(
            "--variant",
            help="FILE[:hardware=pi4,pi5][:runtime=onnxruntime|litert]"
            "[:providers=tensorrt,cuda,cpu][:precision=fp32|fp16|int8][:name=NAME] (repeat)",
        ),
    ] = None,
    release: Annotated[
        int | None, typer.Option("--release", help="release counter (default: highest + 1)")
    ] = None,
    min_agent_version: Annotated[
        str, typer.Option("--min-agent-version", help="oldest agent version that runs it")
    ] = "0.1",
    chunk_size: Annotated[
        int, typer.Option("--chunk-size", help="bytes per verified download chunk")
    ] = DEFAULT_CHUNK_SIZE,
    json_out: JsonOpt = False,
) -> None:
    """Sign a release's file(s) as TUF targets with their release facts (targets, snapshot,
    timestamp): one file, or one target per --variant, each with the boards and runtime it
    needs; the device installs the variant that fits it best."""
    release_name, release_version, specs = _run(
        lambda: release_files(model, name, version, hardware or [], variant or [])
    )
    chunks = sum(-(-s.file.stat().st_size // max(chunk_size, 1)) for s in specs if s.file.is_file())
    with _locked(repo), _chunk_progress(chunks) as progress:
        repository = _run(lambda: Repository.open(repo))
        releases = _run(
            lambda: publish_release(
                repository,
                name=release_name,
                version=release_version,
                variants=specs,
                release=release,
                min_agent_version=min_agent_version,
                chunk_size=chunk_size,
                progress=progress,
            )
        )
    signed = repository.targets()
    rows = [_variant_summary(r, signed[r.target_path]) for r in releases]
    summary = {**rows[0], "variants": rows, "timestamp_version": repository.timestamp_version}
    if json_out:
        _print_json(summary)
        return
    lines = [f"published {release_name}@{release_version} release {releases[0].release}"]
    for row in rows:
        needs = row["runtime"] + (f" ({', '.join(row['providers'])})" if row["providers"] else "")
        lines.append(
            f"variant {row['variant']}: hardware {', '.join(row['hardware'])}; {needs}"
            f"{'; ' + row['precision'] if row['precision'] else ''}\n"
            f"  target: {escape(row['target'])}\n  length: {row['length']} bytes\n"
            f"  sha256: {row['sha256']}\n  chunks: {row['chunks']} of {row['chunk_size']} bytes"
        )
    Console().print("\n".join(lines), highlight=False)


def release_files(
    model: str, name: str | None, version: str | None, hardware: list[str], variants: list[str]
) -> tuple[str, str, list[VariantSpec]]:
    """The CLI's two forms -> (name, version, variants); ``ReleaseInputError`` if mixed."""
    if not variants:
        if name is None or version is None:
            raise ReleaseInputError(
                "a single file needs --name and --version (or give NAME@VERSION and --variant)",
                value=model,
            )
        return name, version, [VariantSpec(Path(model), tuple(hardware) or (ANY_HARDWARE,))]
    if name is not None or version is not None or hardware:
        raise ReleaseInputError(
            "with --variant, name the release as NAME@VERSION and each file's hardware in "
            "its --variant (not --name/--version/--hardware)",
            value=model,
        )
    release_name, at, release_version = model.partition("@")
    if not at or not release_name or not release_version:
        raise ReleaseInputError("with --variant the argument is NAME@VERSION", value=model)
    return release_name, release_version, [parse_variant(text) for text in variants]


def _variant_summary(model_release: ModelRelease, target: Target) -> dict[str, Any]:
    return {
        "target": target.path,
        "length": target.length,
        "sha256": target.hashes["sha256"],
        "name": model_release.name,
        "version": model_release.version,
        "release": model_release.release,
        "variant": model_release.variant_name,
        "hardware": list(model_release.hardware),
        "runtime": model_release.required_runtime,
        "providers": list(model_release.providers),
        "precision": model_release.precision,
        "chunk_size": model_release.chunk_size,
        "chunks": len(model_release.chunks),
    }


def register_model_commands(model_app: typer.Typer) -> None:
    """Add ``publish`` to the ``fleet model`` group."""
    model_app.command("publish")(model_publish)


@contextmanager
def _chunk_progress(chunks: int) -> Iterator[ChunkProgress | None]:
    """A rich progress bar on stderr (stdout stays clean for --json), for large files only."""
    if chunks < _PROGRESS_MIN_CHUNKS:
        yield None
        return
    columns = (TextColumn("hashing chunks"), BarColumn(), MofNCompleteColumn())
    with Progress(
        *columns, TimeRemainingColumn(), console=Console(stderr=True), transient=True
    ) as bar:
        task = bar.add_task("hash", total=chunks)

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield advance


@contextmanager
def _locked(repo: Path) -> Iterator[None]:
    """The repository lock that ``fleet serve`` also takes, or one clear error line."""
    with ExitStack() as stack:
        _run(lambda: stack.enter_context(repository_lock(repo)))
        yield


def _run(action: Callable[[], _T]) -> _T:
    """Run a release action; a FleetError, or an OS error on the way, ends the command."""
    try:
        return action()
    except FleetError as exc:
        _fail(exc)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        _fail(ReleaseRepositoryError(f"cannot access ({reason})", path=str(exc.filename)))


def _keys_summary(repository: Repository) -> dict[str, Any]:
    return {
        "root_version": repository.root_version,
        "roles": {
            role: {
                "keyids": repository.keyids(role),
                "threshold": repository.root.roles[role].threshold,
            }
            for role in TOP_LEVEL_ROLES
        },
    }


def _keys_table(repository: Repository) -> Table:
    table = Table(title=f"TUF roles (root version {repository.root_version})")
    table.add_column("role")
    table.add_column("threshold", justify="right")
    table.add_column("key ids", overflow="fold")
    for role in TOP_LEVEL_ROLES:
        threshold = repository.root.roles[role].threshold
        table.add_row(role, str(threshold), "\n".join(repository.keyids(role)))
    return table


def _print_json(value: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


def _fail(exc: FleetError) -> NoReturn:
    Console(stderr=True).print(f"[red]fleet: {escape(str(exc))}[/red]", highlight=False)
    raise typer.Exit(exc.exit_code)
