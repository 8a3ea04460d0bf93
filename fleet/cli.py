"""``fleet``: the operator's command line (device view, controller service).

Tables for people, ``--json`` for scripts. Device queries go to the controller over MQTT
(``--broker``), or straight to its database with ``--db`` on the controller's own host.
Requests that change anything (deploy, rollback, devices accept, operators add/remove) are
signed with the operator's key (``[operator] key_file``, ``FLEET_OPERATOR__KEY_FILE`` or
``--operator-key``); with ``--db`` the operator and accept commands edit the controller's
database directly (bootstrap on the controller's host, authorized by file access).
Exit codes: 0 ok, 2 unknown device, 65 device pending or refused input, 69 broker or
controller unavailable, 77 request refused by the controller, 78 configuration error.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape

from edge_contract.controller import (
    AcceptRequest,
    DeployRequest,
    DevicesListRequest,
    OperatorAddRequest,
    OperatorRemoveRequest,
    OperatorsListRequest,
    RollbackRequest,
    ShowRequest,
    StatusRequest,
)
from fleet.config import FleetConfig, database, load_fleet_config
from fleet.errors import FleetConfigError, FleetError, OperatorKeyError
from fleet.release.cli import keys_app, register_model_commands
from fleet.view import device_detail_view, devices_table

if TYPE_CHECKING:
    from fleet.app.replies import Reply
    from fleet.app.usecases import FleetApp

RequestT = TypeVar("RequestT", bound=BaseModel)

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__.splitlines()[0])
devices_app = typer.Typer(no_args_is_help=True, help="Devices seen by the controller.")
app.add_typer(devices_app, name="devices")
operators_app = typer.Typer(
    no_args_is_help=True, help="Operator keys the controller trusts for signed requests."
)
app.add_typer(operators_app, name="operators")


def package_version() -> str:
    """The installed distribution's version; the package's own when it is not installed."""
    try:
        return importlib.metadata.version("edge-fleet")
    except importlib.metadata.PackageNotFoundError:
        import fleet  # noqa: PLC0415

        return str(getattr(fleet, "__version__", "unknown"))


def _print_version(value: bool) -> None:
    if value:
        sys.stdout.write(f"fleet {package_version()}\n")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="print the version and exit"
        ),
    ] = False,
) -> None:
    """Options taken before any command (``--version``)."""


ConfigOpt = Annotated[Path | None, typer.Option("--config", help="fleet TOML config file")]
BrokerOpt = Annotated[
    str | None, typer.Option("--broker", help="mqtt://host:port or mqtts://host:port")
]
CaOpt = Annotated[Path | None, typer.Option("--ca-file", help="CA of the broker (TLS)")]
CertOpt = Annotated[Path | None, typer.Option("--cert-file", help="client certificate (TLS)")]
KeyOpt = Annotated[Path | None, typer.Option("--key-file", help="client key (TLS)")]
DbOpt = Annotated[
    str | None,
    typer.Option("--db", help="read the controller database directly (a SQLite file or a URL)"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]
TimeoutOpt = Annotated[float | None, typer.Option("--timeout", help="seconds to wait")]
OperatorKeyOpt = Annotated[
    Path | None,
    typer.Option("--operator-key", help="operator private key (PEM) to sign the request with"),
]
DirectOpt = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="edit the controller database directly (on the controller host): a SQLite file "
        "or a URL",
    ),
]


def _config(
    config: Path | None,
    broker: str | None,
    ca: Path | None = None,
    cert: Path | None = None,
    key: Path | None = None,
    db: str | None = None,
    timeout: float | None = None,
) -> FleetConfig:
    tls = None
    if ca or cert or key:
        tls = {"ca_file": ca, "cert_file": cert, "key_file": key}
    # --db takes a SQLite file, as it always did, or a database URL ([store] url).
    store = {"url": db} if db is not None and "://" in db else None
    path = Path(db) if db is not None and store is None else None
    return load_fleet_config(
        config, broker=broker, tls=tls, db=path, store=store, rpc_timeout_s=timeout
    )


def _fail(exc: FleetError) -> None:
    # soft_wrap: one line however narrow the terminal, so the message greps and pipes whole.
    # escape: messages name config sections ("[operator]") that rich would take for markup.
    message = f"[red]fleet: {escape(str(exc))}[/red]"
    Console(stderr=True).print(message, highlight=False, soft_wrap=True)
    raise typer.Exit(exc.exit_code)


def _request(method: str, kind: type[RequestT], /, **fields: Any) -> RequestT:
    """The typed request a command sends (``edge_contract.controller``), checked here first:
    a bad argument fails as the controller would refuse it, naming the field."""
    from edge_contract.controller import decode_request  # noqa: PLC0415
    from edge_contract.errors import PayloadError  # noqa: PLC0415

    try:
        return decode_request(method, kind, fields)
    except PayloadError as exc:
        raise FleetError(str(exc)) from None


def _remote(config: FleetConfig, method: str, request: BaseModel) -> dict[str, Any]:
    """Ask the controller over the broker (an unsigned, read-only method)."""
    from fleet.rpc import call  # noqa: PLC0415

    return asyncio.run(call(config, method, request.model_dump(exclude_none=True)))


def _direct(config: FleetConfig, use: Callable[[FleetApp], Reply]) -> dict[str, Any]:
    """Run a use case straight on the controller's database (``--db``): the same use cases
    (``fleet.app``) the controller runs for a request, with the same reply."""
    from fleet.app.replies import to_json  # noqa: PLC0415
    from fleet.app.usecases import FleetApp  # noqa: PLC0415

    store = _open_store(config)
    try:
        return to_json(use(FleetApp(store)))
    finally:
        store.close()


@devices_app.command("list")
def devices_list(
    json_out: JsonOpt = False,
    broker: BrokerOpt = None,
    db: DbOpt = None,
    config: ConfigOpt = None,
    ca_file: CaOpt = None,
    cert_file: CertOpt = None,
    key_file: KeyOpt = None,
    timeout: TimeoutOpt = None,
) -> None:
    """Every device seen: online/offline, last telemetry age, CPU, memory, temperature."""
    try:
        cfg = _config(config, broker, ca_file, cert_file, key_file, db, timeout)
        listing = _request("devices-list", DevicesListRequest)
        if db is not None:
            reply = _direct(cfg, lambda app: app.list_devices(listing))
        else:
            reply = _remote(cfg, "devices-list", listing)
    except FleetError as exc:
        _fail(exc)
        return
    if json_out:
        sys.stdout.write(json.dumps(reply["devices"], indent=2) + "\n")
        return
    console = Console()
    console.print(devices_table(reply["devices"]))
    # Admission under the table (not a column): the table's columns already fill 80 columns.
    pending = [d["device_id"] for d in reply["devices"] if d.get("admission") == "pending"]
    if pending:
        console.print(
            f"pending, not deploy targets until `fleet devices accept ID`: {', '.join(pending)}",
            highlight=False,
            soft_wrap=True,
        )


@devices_app.command("show")
def devices_show(
    device_id: Annotated[str, typer.Argument(help="device id")],
    json_out: JsonOpt = False,
    raw: Annotated[
        bool,
        typer.Option(
            "--raw", help="the whole detail as JSON (every telemetry field, recent events)"
        ),
    ] = False,
    broker: BrokerOpt = None,
    db: DbOpt = None,
    config: ConfigOpt = None,
    ca_file: CaOpt = None,
    cert_file: CertOpt = None,
    key_file: KeyOpt = None,
    timeout: TimeoutOpt = None,
) -> None:
    """One device: state, resources, link, models, OTA state and its latest events."""
    try:
        cfg = _config(config, broker, ca_file, cert_file, key_file, db, timeout)
        show = _request("devices-show", ShowRequest, device_id=device_id)
        if db is not None:
            reply = _direct(cfg, lambda app: app.show_device(show))
        else:
            reply = _remote(cfg, "devices-show", show)
    except FleetError as exc:
        _fail(exc)
        return
    if json_out or raw:
        sys.stdout.write(json.dumps(reply["device"], indent=2) + "\n")
    else:
        device_detail_view(Console(), reply["device"])


@app.command("serve")
def serve(
    broker: BrokerOpt = None,
    db: Annotated[
        str | None, typer.Option("--db", help="controller database: a SQLite file or a URL")
    ] = None,
    config: ConfigOpt = None,
    ca_file: CaOpt = None,
    cert_file: CertOpt = None,
    key_file: KeyOpt = None,
    log_format: Annotated[str, typer.Option("--log-format", help="auto, json or console")] = "auto",
    repo: Annotated[
        Path | None, typer.Option("--repo", help="TUF repository to serve (enables OTA)")
    ] = None,
) -> None:
    """Run the controller: record every device's status, telemetry and events; serve OTA."""
    from edge_runtime.log import configure_logging  # noqa: PLC0415
    from fleet.service import Controller  # noqa: PLC0415

    if log_format not in ("auto", "json", "console"):
        _fail(FleetError(f"--log-format must be auto, json or console, not {log_format!r}"))
    configure_logging("info", log_format)  # type: ignore[arg-type]
    try:
        cfg = _config(config, broker, ca_file, cert_file, key_file, db)
        if repo is not None:
            cfg = cfg.model_copy(update={"ota": cfg.ota.model_copy(update={"repo": repo})})
        asyncio.run(Controller(cfg).run())
    except FleetError as exc:
        _fail(exc)


@app.command("deploy")
def deploy(
    release: Annotated[str, typer.Argument(help="NAME@VERSION of a published model")],
    device: Annotated[
        list[str] | None, typer.Option("--device", help="device id (repeatable)")
    ] = None,
    all_devices: Annotated[bool, typer.Option("--all", help="every device seen")] = False,
    json_out: JsonOpt = False,
    broker: BrokerOpt = None,
    config: ConfigOpt = None,
    ca_file: CaOpt = None,
    cert_file: CertOpt = None,
    key_file: KeyOpt = None,
    timeout: TimeoutOpt = None,
    operator_key: OperatorKeyOpt = None,
) -> None:
    """Set the desired model of devices (signed, retained; the controller needs --repo)."""
    name, _, version = release.partition("@")
    try:
        if not name or not version:
            raise FleetError(f"release must be NAME@VERSION, not {release!r}")
        if bool(device) == all_devices:
            raise FleetError("give --device ID (one or more) or --all")
        cfg = _config(config, broker, ca_file, cert_file, key_file, None, timeout)
        request = _request(
            "deploy",
            DeployRequest,
            model=name,
            version=version,
            devices=device or [],
            all=all_devices,
        )
        reply = _signed(cfg, operator_key, "deploy", request)
    except FleetError as exc:
        _fail(exc)
        return
    _print_desired(reply, json_out, f"{name}@{version} desired on")


@app.command("rollback")
def rollback(
    device: Annotated[str, typer.Option("--device", help="device id")],
    model: Annotated[str | None, typer.Option("--model", help="model name")] = None,
    json_out: JsonOpt = False,
    broker: BrokerOpt = None,
    config: ConfigOpt = None,
    ca_file: CaOpt = None,
    cert_file: CertOpt = None,
    key_file: KeyOpt = None,
    timeout: TimeoutOpt = None,
    operator_key: OperatorKeyOpt = None,
) -> None:
    """Return a device to its previous committed model version."""
    try:
        cfg = _config(config, broker, ca_file, cert_file, key_file, None, timeout)
        request = _request("rollback", RollbackRequest, device_id=device, model=model)
        reply = _signed(cfg, operator_key, "rollback", request)
    except FleetError as exc:
        _fail(exc)
        return
    _print_desired(
        reply, json_out, f"rollback of {reply.get('model')} to {reply.get('version')} on"
    )


def _print_desired(reply: dict[str, Any], json_out: bool, what: str) -> None:
    reply.pop("ok", None)
    if json_out:
        sys.stdout.write(json.dumps(reply, indent=2) + "\n")
        return
    devices = reply.get("devices") or [reply.get("device_id")]
    console = Console()
    console.print(f"{what}: {', '.join(str(d) for d in devices)}", highlight=False)
    for skipped in reply.get("skipped") or []:
        console.print(f"skipped {skipped['device_id']}: {skipped['reason']}", highlight=False)


# -- operators and device admission ----------------------------------------------------------


def _signer(cfg: FleetConfig, operator_key: Path | None, method: str) -> Any:
    """The ``OperatorSigner`` of the configured key; a clear config error when there is none."""
    from fleet.operators import load_private_key  # noqa: PLC0415
    from fleet.rpc import OperatorSigner  # noqa: PLC0415

    path = operator_key or cfg.operator.key_file
    if path is None:
        raise FleetConfigError(
            f"{method} must be signed by an operator key: give --operator-key FILE, set "
            "[operator] key_file in the fleet config or FLEET_OPERATOR__KEY_FILE "
            "(create one with `fleet operators keygen --out FILE`)"
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        message = f"cannot read the operator key ({exc.strerror})"
        raise OperatorKeyError(message, value=str(path)) from None
    return OperatorSigner(load_private_key(data, source=str(path)), cfg.operator.name)


def _signed(
    cfg: FleetConfig, operator_key: Path | None, method: str, request: BaseModel
) -> dict[str, Any]:
    from fleet.rpc import call  # noqa: PLC0415

    signer = _signer(cfg, operator_key, method)
    body = request.model_dump(exclude_none=True)
    return asyncio.run(call(cfg, method, body, signer=signer))


def _open_store(cfg: FleetConfig) -> Any:
    from fleet.store import SqlFleetStore  # noqa: PLC0415

    location = database(cfg)
    if isinstance(location, Path) and not location.is_file():
        raise FleetError(f"no controller database at {location}")
    return SqlFleetStore(location)


def _public_key_arg(text: str) -> str:
    """PUBLIC_KEY as given: a file holding the key, or the base64/PEM text itself."""
    from fleet.operators import parse_public_key  # noqa: PLC0415

    path = Path(text)
    if len(text) < 4096 and path.is_file():
        text = path.read_text(errors="replace")
    if "PRIVATE KEY" in text:
        raise OperatorKeyError("that is a private key; give the public key", value=str(path))
    return parse_public_key(text)


@operators_app.command("keygen")
def operators_keygen(
    out: Annotated[Path, typer.Option("--out", help="private key file to create (PEM, 0600)")],
    json_out: JsonOpt = False,
) -> None:
    """Create an operator key: FILE (private, mode 0600) and FILE.pub (public, base64)."""
    from fleet.operators import generate_key, key_id, private_key_pem, public_key_text  # noqa: PLC0415

    key = generate_key()
    public = public_key_text(key.public_key())
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(private_key_pem(key))
        Path(f"{out}.pub").write_text(public + "\n")
    except OSError as exc:
        _fail(OperatorKeyError(f"cannot create the key file ({exc.strerror})", value=str(out)))
        return
    kid = key_id(public)
    if json_out:
        info = {"key_file": str(out), "public_key": public, "key_id": kid}
        sys.stdout.write(json.dumps(info, indent=2) + "\n")
        return
    console = Console()
    console.print(f"private key: {out} (mode 0600)", highlight=False)
    console.print(f"public key:  {public}", highlight=False)
    console.print(f"key id:      {kid}", highlight=False)
    console.print(
        f"register it: fleet operators add NAME {out}.pub (with --db on the controller's host)",
        highlight=False,
    )


@operators_app.command("add")
def operators_add(
    name: Annotated[str, typer.Argument(help="operator name")],
    public_key: Annotated[str, typer.Argument(help="public key: a file, or base64/PEM text")],
    db: DirectOpt = None,
    broker: BrokerOpt = None,
    config: ConfigOpt = None,
    ca_file: CaOpt = None,
    cert_file: CertOpt = None,
    key_file: KeyOpt = None,
    timeout: TimeoutOpt = None,
    operator_key: OperatorKeyOpt = None,
) -> None:
    """Trust an operator key: with --db directly, else signed by an existing operator."""
    try:
        key = _public_key_arg(public_key)
        cfg = _config(config, broker, ca_file, cert_file, key_file, db, timeout)
        request = _request("operators-add", OperatorAddRequest, name=name, public_key=key)
        if db is not None:
            reply = _direct(cfg, lambda app: app.add_operator(request))
        else:
            reply = _signed(cfg, operator_key, "operators-add", request)
        kid = reply["key_id"]
    except FleetError as exc:
        _fail(exc)
        return
    Console().print(f"operator {name} added (key id {kid})", highlight=False)


@operators_app.command("remove")
def operators_remove(
    name: Annotated[str, typer.Argument(help="operator name")],
    db: DirectOpt = None,
    broker: BrokerOpt = None,
    config: ConfigOpt = None,
    ca_file: CaOpt = None,
    cert_file: CertOpt = None,
    key_file: KeyOpt = None,
    timeout: TimeoutOpt = None,
    operator_key: OperatorKeyOpt = None,
) -> None:
    """Stop trusting an operator: with --db directly, else signed by an existing operator."""
    try:
        cfg = _config(config, broker, ca_file, cert_file, key_file, db, timeout)
        request = _request("operators-remove", OperatorRemoveRequest, name=name)
        if db is not None:
            # The host's administrator may remove the last operator (nobody else could).
            _direct(cfg, lambda app: app.remove_operator(request, keep_last=False))
        else:
            _signed(cfg, operator_key, "operators-remove", request)
    except FleetError as exc:
        _fail(exc)
        return
    Console().print(f"operator {name} removed", highlight=False)


@operators_app.command("list")
def operators_list(
    json_out: JsonOpt = False,
    db: DirectOpt = None,
    broker: BrokerOpt = None,
    config: ConfigOpt = None,
    ca_file: CaOpt = None,
    cert_file: CertOpt = None,
    key_file: KeyOpt = None,
    timeout: TimeoutOpt = None,
) -> None:
    """The operators the controller trusts, with their key ids."""
    try:
        cfg = _config(config, broker, ca_file, cert_file, key_file, db, timeout)
        listing = _request("operators-list", OperatorsListRequest)
        if db is not None:
            operators = _direct(cfg, lambda app: app.list_operators(listing))["operators"]
        else:
            operators = _remote(cfg, "operators-list", listing)["operators"]
    except FleetError as exc:
        _fail(exc)
        return
    if json_out:
        sys.stdout.write(json.dumps(operators, indent=2) + "\n")
        return
    console = Console()
    if not operators:
        console.print("no operators: add one with `fleet operators add NAME KEY --db DB`")
    for operator in operators:
        console.print(f"{operator['name']}  {operator['key_id']}", highlight=False)


@devices_app.command("accept")
def devices_accept(
    device_id: Annotated[str, typer.Argument(help="device id")],
    db: DirectOpt = None,
    broker: BrokerOpt = None,
    config: ConfigOpt = None,
    ca_file: CaOpt = None,
    cert_file: CertOpt = None,
    key_file: KeyOpt = None,
    timeout: TimeoutOpt = None,
    operator_key: OperatorKeyOpt = None,
) -> None:
    """Accept a pending device as a deploy target (signed; or --db on the controller host)."""
    try:
        cfg = _config(config, broker, ca_file, cert_file, key_file, db, timeout)
        request = _request("devices-accept", AcceptRequest, device_id=device_id)
        if db is not None:
            _direct(cfg, lambda app: app.accept_device(request, operator="--db"))
        else:
            _signed(cfg, operator_key, "devices-accept", request)
    except FleetError as exc:
        _fail(exc)
        return
    Console().print(f"device {device_id} accepted", highlight=False)


model_app = typer.Typer(
    no_args_is_help=True, help="Models: optimization on this machine, signed publishing."
)
app.add_typer(model_app, name="model")
app.add_typer(keys_app, name="keys")
register_model_commands(model_app)


@model_app.command("optimize")
def model_optimize(
    model: Annotated[Path, typer.Argument(help="fp32 ONNX model to optimize")],
    eval_data: Annotated[
        Path, typer.Option("--eval", help=".npz held-out split: input arrays (or x), labels y")
    ],
    out: Annotated[Path, typer.Option("--out", help="folder for the variants and the report")],
    calibration: Annotated[
        Path | None, typer.Option("--calibration", help=".npz calibration split")
    ] = None,
    mode: Annotated[
        str, typer.Option("--mode", help="int8 quantization: auto, static or dynamic")
    ] = "auto",
    sparsity: Annotated[
        float, typer.Option("--sparsity", help="magnitude pruning sparsity, 0 to skip")
    ] = 0.5,
    tf_model: Annotated[
        Path | None,
        typer.Option("--tf-model", help="Keras file or SavedModel for the TFLite int8 variant"),
    ] = None,
    compare: Annotated[
        list[Path] | None, typer.Option("--compare", help="extra ONNX model to measure (repeat)")
    ] = None,
    runs: Annotated[int, typer.Option("--runs", help="timed single-example runs")] = 200,
    threads: Annotated[int, typer.Option("--threads", help="intra-op threads")] = 1,
    attention_heads: Annotated[
        int | None,
        typer.Option("--attention-heads", help="transformer: fuse it first (with --hidden-size)"),
    ] = None,
    hidden_size: Annotated[
        int | None, typer.Option("--hidden-size", help="transformer hidden size")
    ] = None,
) -> None:
    """Quantize and prune an ONNX model, then compare size, latency and accuracy."""
    # Checked before any work: matplotlib is imported only to write the report at the end,
    # sympy only by ONNX Runtime's transformer fusions (--attention-heads).
    later = ["matplotlib"] if attention_heads is None else ["matplotlib", "sympy"]
    for module in later:
        if importlib.util.find_spec(module) is None:
            _fail(_optimize_extra_missing(module))
    try:
        from rich.markup import escape  # noqa: PLC0415
        from rich.progress import Progress  # noqa: PLC0415

        from fleet.modelopt.errors import OptionsError  # noqa: PLC0415
        from fleet.modelopt.pipeline import OptimizeOptions, optimize  # noqa: PLC0415
        from fleet.modelopt.quantize import AttentionShape  # noqa: PLC0415
        from fleet.modelopt.report import render_table  # noqa: PLC0415
    except ImportError as exc:  # numpy, onnxruntime, onnx; an ABI mismatch has no name
        _fail(_optimize_extra_missing(exc.name or str(exc)))
        return
    if mode not in ("auto", "static", "dynamic"):
        _fail(OptionsError(f"--mode must be auto, static or dynamic, not {mode!r}"))
    attention = None
    if (attention_heads is None) != (hidden_size is None):
        _fail(OptionsError("--attention-heads and --hidden-size go together"))
    try:
        if attention_heads is not None and hidden_size is not None:
            attention = AttentionShape(attention_heads, hidden_size)
    except OptionsError as exc:
        _fail(exc)
    options = OptimizeOptions(
        model=model,
        eval_data=eval_data,
        out=out,
        calibration=calibration,
        mode=mode,  # type: ignore[arg-type]  # checked above
        sparsity=sparsity,
        tf_model=tf_model,
        compare=tuple(compare or ()),
        runs=runs,
        threads=threads,
        attention=attention,
    )
    console = Console()
    try:
        with Progress(console=console, transient=True) as progress:
            report = optimize(options, progress)
    except FleetError as exc:
        _fail(exc)
        return
    console.print(render_table(report))
    for note in report.notes:
        console.print(f"[yellow]note:[/yellow] {escape(note)}", highlight=False)
    console.print(f"report: {out / 'report.json'}, {out / 'report.png'}", highlight=False)


def _optimize_extra_missing(module: str) -> FleetConfigError:
    # _fail escapes the message: rich shows "[optimize]" as it is.
    return FleetConfigError(
        f"fleet model optimize needs the 'optimize' extra ({module} is not installed): "
        "pip install 'edge-fleet[optimize]'"
    )


def main() -> None:
    """The CLI itself; the ``fleet`` command reaches it through ``fleet.__main__``, which
    first makes sure the ``fleet`` extra (typer, rich) is installed."""
    from edge_runtime.log import configure_logging  # noqa: PLC0415

    # Library logs go to stderr and only for errors, so --json stays clean; the link's
    # reconnect warnings are left out: the command says in one line what went wrong.
    configure_logging("error", "console")
    app()


@app.command("controller-status")
def controller_status(
    broker: BrokerOpt = None,
    config: ConfigOpt = None,
    ca_file: CaOpt = None,
    cert_file: CertOpt = None,
    key_file: KeyOpt = None,
    timeout: TimeoutOpt = None,
) -> None:
    """Messages the controller refused since it started, by reason, and the newest ones (JSON)."""
    try:
        cfg = _config(config, broker, ca_file, cert_file, key_file, None, timeout)
        reply = _remote(cfg, "controller-status", _request("controller-status", StatusRequest))
    except FleetError as exc:
        _fail(exc)
        return
    body = {"rejected": reply["rejected"], "dead_letters": reply["dead_letters"]}
    sys.stdout.write(json.dumps(body, indent=2) + "\n")
