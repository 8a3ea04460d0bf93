"""Generate the message classes of the gRPC APIs from the ``.proto`` files beside this one.

Run at build time, never on a device: ``make`` (the venv stamp) runs
``python agent/inference/protos/generate.py``, and the wheel build runs it from setup.py's
``build_py`` step, so the generated ``*_pb2.py`` and ``*_pb2.pyi`` are in the wheel. Needs
``grpcio-tools`` (protoc with the Python and stub generators); the device needs only the
protobuf runtime, at least the version whose protoc generated the files (protobuf checks
that when a module is imported).

Standard library and grpc_tools only: setup.py runs this file by path, before the ``agent``
package is importable. Each generated module is rewritten to add its file to the private
descriptor pool ``agent.inference.protos.POOL`` instead of protobuf's default pool (see that
module's docstring).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]  # the repository (or sdist) root: imports are rooted there
DEFAULT_POOL = "_descriptor_pool.Default()"
PRIVATE_POOL_IMPORT = "from agent.inference.protos import POOL as _POOL\n"


def proto_files() -> list[Path]:
    """The ``.proto`` files, sorted."""
    return sorted(HERE.glob("*.proto"))


def generate() -> list[Path]:
    """Run protoc over every ``.proto`` file here; the generated Python modules."""
    from grpc_tools import protoc  # noqa: PLC0415 - only at build time

    protos = [str(path.relative_to(ROOT)) for path in proto_files()]
    include = str(Path(protoc.__file__).parent / "_proto")
    argv = ["protoc", f"-I{ROOT}", f"-I{include}", f"--python_out={ROOT}", f"--pyi_out={ROOT}"]
    status = protoc.main([*argv, *protos])
    if status != 0:
        raise SystemExit(f"protoc failed ({status}) on {protos}")
    modules = [path.with_name(f"{path.stem}_pb2.py") for path in proto_files()]
    for module in modules:
        _use_private_pool(module)
    return modules


def _use_private_pool(module: Path) -> None:
    text = module.read_text()
    if DEFAULT_POOL not in text:
        raise SystemExit(f"{module}: protoc's output has no {DEFAULT_POOL}; check the generator")
    text = text.replace(DEFAULT_POOL, "_POOL")
    marker = "# @@protoc_insertion_point(imports)\n"
    module.write_text(text.replace(marker, marker + PRIVATE_POOL_IMPORT, 1))


if __name__ == "__main__":
    for path in generate():
        sys.stdout.write(f"generated {path.relative_to(ROOT)}\n")
