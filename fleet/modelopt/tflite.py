"""The TFLite full-integer path: a Keras model or SavedModel to an int8-in, int8-out .tflite.

TensorFlow is an optional, heavy dependency (the ``models`` extra); without it the rest of the
report is still produced and this variant is listed as skipped with one line saying what to
install. The converted file is measured through LiteRT (fleet/modelopt/litert_session.py), which
speaks float and quantizes with the file's scale and zero point, as the agent would serve it.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fleet.modelopt.data import Dataset
from fleet.modelopt.errors import ModelFileError, OptimizeError

KERAS_SUFFIXES = (".keras", ".h5")
MISSING_TENSORFLOW = (
    "TFLite full-integer variant skipped: TensorFlow is not installed "
    "(install the `models` extra: pip install 'edge-fleet[models]', or just tensorflow-cpu)"
)
NO_TF_MODEL = (
    "TFLite full-integer variant skipped: pass --tf-model PATH "
    "(a Keras .keras/.h5 file or a SavedModel folder)"
)
REPRESENTATIVE_EXAMPLES = 200


def tensorflow_available() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


def check_tf_model(path: Path) -> None:
    """``ModelFileError`` unless ``path`` is a Keras file or a SavedModel folder."""
    if path.is_dir() and (path / "saved_model.pb").is_file():
        return
    if path.is_file() and path.suffix in KERAS_SUFFIXES:
        return
    raise ModelFileError("not a Keras .keras/.h5 file or a SavedModel folder", path=str(path))


def convert_full_integer(tf_model: Path, calibration: Dataset, out: Path) -> Path:
    """Convert ``tf_model`` to a full-integer .tflite calibrated on ``calibration``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf  # noqa: PLC0415  # optional and slow to import

    check_tf_model(tf_model)
    try:
        if tf_model.is_dir():
            converter = tf.lite.TFLiteConverter.from_saved_model(str(tf_model))
        else:
            keras_model = tf.keras.models.load_model(str(tf_model), compile=False)
            converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: _representative(calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
        out.write_bytes(converter.convert())
    except Exception as exc:  # converter errors come as many types (ConverterError, ValueError)
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise OptimizeError(f"TFLite conversion failed ({first_line})", path=str(tf_model)) from exc
    return out


def _representative(calibration: Dataset) -> Iterator[list[np.ndarray]]:
    """One example at a time, inputs in the order the model declares them."""
    for index in range(min(calibration.size, REPRESENTATIVE_EXAMPLES)):
        yield [array.astype(np.float32) for array in calibration.rows(index, index + 1).values()]
