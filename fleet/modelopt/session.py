"""ONNX Runtime sessions for measuring models: opened on the CPU with fixed thread counts.

Fixed threads make latency figures comparable between variants and between runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort

from fleet.modelopt.errors import ModelFileError

CPU = "CPUExecutionProvider"


def open_session(path: Path, *, threads: int = 1) -> ort.InferenceSession:
    """A CPU session on ``path``; ``ModelFileError`` if the file is missing or does not load."""
    if not path.is_file():
        raise ModelFileError("no such model file", path=str(path))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: ORT's warnings are not the user's problem
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=[CPU])
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types, all Exceptions
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(
            f"ONNX Runtime cannot load the model ({first_line})", path=str(path)
        ) from exc


def input_names(session: ort.InferenceSession) -> list[str]:
    return [node.name for node in session.get_inputs()]


def run_first_output(
    session: ort.InferenceSession, batches: Iterable[Mapping[str, np.ndarray]]
) -> np.ndarray:
    """The model's first output over all ``batches``, concatenated along the batch axis."""
    output_name = session.get_outputs()[0].name
    parts = [np.asarray(session.run([output_name], dict(batch))[0]) for batch in batches]
    return np.concatenate(parts, axis=0)
