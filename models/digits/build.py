"""Build the digits reference models: data splits, Keras training, ONNX and TFLite, fp32 and int8.

Run from the repository root with the heavy build environment:

    .venv-models/bin/python models/digits/build.py

Data: scikit-learn's bundled 8x8 handwritten digits (1797 images, no download). Pixels are
scaled to [0, 1] (``x = pixels / 16``, float32 [N, 64]); labels ``y`` are int64 0..9. A fixed,
stratified split gives train / calibration / eval; calibration and eval are committed in
``data/``. The same trained weights are exported four ways, each with a card beside it:

- ``digits-fp32.onnx``   a hand-built ONNX graph (MatMul/Add/Relu/Softmax) of the Keras weights
- ``digits-int8.onnx``   ONNX Runtime static QDQ int8 of the fp32 ONNX (fleet.modelopt)
- ``digits-fp32.tflite`` TFLiteConverter from a SavedModel with a ``serving_default`` signature
- ``digits-int8.tflite`` full-integer TFLite (int8 input and output) calibrated on calibration

Every card's golden output and reference statistics come from running that exact file.
Seeds are fixed; re-running gives the same splits and (on the same CPU) the same weights.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # oneDNN reorders float sums: not bit-stable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from agent.inference.cardfile import load_card  # noqa: E402
from edge_contract.card import Golden, ModelCard, Quantization, Runtime, TensorSpec, card_path_for  # noqa: E402
from fleet.modelopt.cards import classification_reference, onnx_tensor_specs  # noqa: E402
from fleet.modelopt.data import load_dataset  # noqa: E402
from fleet.modelopt.quantize import quantize_int8_static  # noqa: E402
from fleet.modelopt.session import open_session, run_first_output  # noqa: E402

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
SEED = 20240607
EVAL_FRACTION = 0.2
CALIBRATION_SIZE = 200
HIDDEN = (128, 64)
EPOCHS = 60
LABELS = tuple(str(digit) for digit in range(10))
INPUT_NAME, OUTPUT_NAME = "pixels", "probabilities"
FP32_ATOL = 1e-4
INT8_ATOL_STEPS = 3  # output quantization steps: kernels may round differently across CPUs
ONNX_OPSET = 17
ONNX_IR_VERSION = 8  # readable by ONNX Runtime 1.14+ (older Jetson images)


@dataclass(frozen=True)
class Splits:
    x_train: np.ndarray
    y_train: np.ndarray
    x_calibration: np.ndarray
    y_calibration: np.ndarray
    x_eval: np.ndarray
    y_eval: np.ndarray


def make_splits() -> Splits:
    """Stratified train / calibration / eval split of the bundled digits, fixed by SEED."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_rest, x_eval, y_rest, y_eval = train_test_split(
        x, y, test_size=EVAL_FRACTION, stratify=y, random_state=SEED
    )
    x_train, x_cal, y_train, y_cal = train_test_split(
        x_rest, y_rest, test_size=CALIBRATION_SIZE, stratify=y_rest, random_state=SEED
    )
    return Splits(x_train, y_train, x_cal, y_cal, x_eval, y_eval)


def save_splits(splits: Splits) -> None:
    DATA.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(DATA / "calibration.npz", x=splits.x_calibration, y=splits.y_calibration)
    np.savez_compressed(DATA / "eval.npz", x=splits.x_eval, y=splits.y_eval)
    build_dir = REPO / "models" / "build" / "digits"
    build_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(build_dir / "train.npz", x=splits.x_train, y=splits.y_train)


def train_keras(splits: Splits, hidden: tuple[int, ...] = HIDDEN, epochs: int = EPOCHS):
    """A small MLP: pixels -> Dense(relu)... -> Dense(10, softmax) named probabilities."""
    import keras

    keras.utils.set_random_seed(SEED)
    inputs = keras.Input(shape=(64,), name=INPUT_NAME)
    layer = inputs
    for width in hidden:
        layer = keras.layers.Dense(width, activation="relu")(layer)
    outputs = keras.layers.Dense(10, activation="softmax", name=OUTPUT_NAME)(layer)
    model = keras.Model(inputs, outputs, name="digits")
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(splits.x_train, splits.y_train, epochs=epochs, batch_size=32, shuffle=True, verbose=0)
    return model


def dense_weights(model) -> list[tuple[np.ndarray, np.ndarray]]:
    """(kernel, bias) of every Dense layer, in order."""
    return [
        (layer.kernel.numpy(), layer.bias.numpy())
        for layer in model.layers
        if hasattr(layer, "kernel")
    ]


def export_onnx_fp32(weights: list[tuple[np.ndarray, np.ndarray]], path: Path) -> None:
    """The MLP as a plain ONNX graph: (MatMul, Add, Relu)* then MatMul, Add, Softmax."""
    nodes, initializers = [], []
    current = INPUT_NAME
    for index, (kernel, bias) in enumerate(weights):
        last = index == len(weights) - 1
        w_name, b_name = f"dense{index}.weight", f"dense{index}.bias"
        initializers += [
            numpy_helper.from_array(kernel.astype(np.float32), w_name),
            numpy_helper.from_array(bias.astype(np.float32), b_name),
        ]
        product, logits = f"dense{index}.matmul", f"dense{index}.logits"
        nodes.append(helper.make_node("MatMul", [current, w_name], [product]))
        nodes.append(helper.make_node("Add", [product, b_name], [logits]))
        if last:
            nodes.append(helper.make_node("Softmax", [logits], [OUTPUT_NAME], axis=-1))
        else:
            current = f"dense{index}.relu"
            nodes.append(helper.make_node("Relu", [logits], [current]))
    graph = helper.make_graph(
        nodes,
        "digits",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", 10])],
        initializer=initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
        producer_name="edge-fleet models/digits/build.py",
    )
    model.ir_version = ONNX_IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def export_tflite(
    weights: list[tuple[np.ndarray, np.ndarray]], path: Path, representative: np.ndarray | None
) -> None:
    """TFLite through a SavedModel whose serving_default signature is pixels -> probabilities.

    The weights go in as constants, not variables: the int8 calibrator cannot read resource
    variables of a Keras model saved inside a tf.Module. With ``representative`` the model is
    full-integer: int8 kernels, int8 input and output.
    """
    import tensorflow as tf

    layers = [(tf.constant(kernel), tf.constant(bias)) for kernel, bias in weights]

    class Serving(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 64], tf.float32, name=INPUT_NAME)])
        def serve(self, pixels):
            hidden = pixels
            for kernel, bias in layers[:-1]:
                hidden = tf.nn.relu(tf.matmul(hidden, kernel) + bias)
            kernel, bias = layers[-1]
            return {OUTPUT_NAME: tf.nn.softmax(tf.matmul(hidden, kernel) + bias)}

    module = Serving()
    with tempfile.TemporaryDirectory(prefix="digits-savedmodel-") as saved:
        tf.saved_model.save(module, saved, signatures={"serving_default": module.serve})
        converter = tf.lite.TFLiteConverter.from_saved_model(saved, ["serving_default"])
        if representative is not None:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: ([row[None, :]] for row in representative)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        path.write_bytes(converter.convert())


# --- running the exact files -----------------------------------------------------------------


def run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    session = open_session(path, threads=1)
    return run_first_output(session, [{INPUT_NAME: x}])


@dataclass(frozen=True)
class TfliteModel:
    """A .tflite file as its serving_default signature shows it, run one row at a time."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    run: Callable[[np.ndarray], np.ndarray]


def open_tflite(path: Path) -> TfliteModel:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    signatures = interpreter.get_signature_list()
    expected = {"serving_default": {"inputs": [INPUT_NAME], "outputs": [OUTPUT_NAME]}}
    if signatures != expected:
        raise SystemExit(f"{path.name}: signature list {signatures}, expected {expected}")
    runner = interpreter.get_signature_runner("serving_default")
    in_detail = runner.get_input_details()[INPUT_NAME]
    out_detail = runner.get_output_details()[OUTPUT_NAME]
    in_spec, out_spec = _tflite_spec(INPUT_NAME, in_detail), _tflite_spec(OUTPUT_NAME, out_detail)

    def run(x: np.ndarray) -> np.ndarray:
        rows = []
        for row in x:
            feed = _quantize(row[None, :], in_spec)
            raw = runner(**{INPUT_NAME: feed})[OUTPUT_NAME]
            rows.append(_dequantize(raw, out_spec))
        return np.concatenate(rows, axis=0)

    return TfliteModel((in_spec,), (out_spec,), run)


def _tflite_spec(name: str, detail: dict) -> TensorSpec:
    scale, zero_point = detail["quantization"]
    quantization = Quantization(scale=float(scale), zero_point=int(zero_point)) if scale else None
    shape = tuple(int(d) for d in detail.get("shape_signature", detail["shape"]))
    return TensorSpec(
        name=name, dtype=np.dtype(detail["dtype"]).name, shape=shape, quantization=quantization
    )


def _quantize(x: np.ndarray, spec: TensorSpec) -> np.ndarray:
    if spec.quantization is None:
        return x.astype(np.float32)
    q = np.round(x / spec.quantization.scale) + spec.quantization.zero_point
    info = np.iinfo(np.dtype(spec.dtype))
    return np.clip(q, info.min, info.max).astype(spec.dtype)


def _dequantize(raw: np.ndarray, spec: TensorSpec) -> np.ndarray:
    if spec.quantization is None:
        return raw.astype(np.float32)
    steps = raw.astype(np.float32) - spec.quantization.zero_point
    return (steps * spec.quantization.scale).astype(np.float32)


# --- cards -----------------------------------------------------------------------------------


def write_card(
    path: Path,
    *,
    runtime: Runtime,
    version: str,
    specs: tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]],
    outputs_eval: np.ndarray,
    splits: Splits,
    atol: float,
    description: str,
) -> ModelCard:
    """The card of ``path``: golden = first eval example and this file's own output for it."""
    card = ModelCard(
        name="digits",
        version=version,
        runtime=runtime,
        task="classification",
        inputs=specs[0],
        outputs=specs[1],
        labels=LABELS,
        golden=Golden(
            inputs={INPUT_NAME: splits.x_eval[:1].tolist()},
            outputs={OUTPUT_NAME: outputs_eval[:1].astype(float).tolist()},
            atol=atol,
        ),
        reference=classification_reference(outputs_eval, splits.y_eval),
        description=description,
    )
    card_path = card_path_for(path)
    card_path.write_text(json.dumps(card.model_dump(mode="json"), indent=2) + "\n")
    return load_card(card_path)  # proves the written file validates


def int8_atol(spec: TensorSpec) -> float:
    scale = spec.quantization.scale if spec.quantization else 1.0 / 256
    return round(INT8_ATOL_STEPS * scale, 6)


def onnx_output_scale(path: Path) -> float:
    """Scale of the last DequantizeLinear feeding the output (QDQ models keep float I/O)."""
    graph = onnx.load(str(path)).graph
    inits = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in reversed(graph.node):
        if node.op_type == "DequantizeLinear" and node.input[1] in inits:
            return float(np.max(inits[node.input[1]]))
    return 1.0 / 256


def describe(variant: str) -> str:
    hidden = "-".join(map(str, HIDDEN))
    return f"MLP 64-{hidden}-10 on scikit-learn's 8x8 digits (x = pixels/16); {variant}"


def build_onnx(weights: list[tuple[np.ndarray, np.ndarray]], splits: Splits) -> dict[str, float]:
    """digits-fp32.onnx and its static int8 (via fleet.modelopt); eval accuracy of each."""
    fp32, int8 = HERE / "digits-fp32.onnx", HERE / "digits-int8.onnx"
    export_onnx_fp32(weights, fp32)
    quantize_int8_static(fp32, int8, load_dataset(DATA / "calibration.npz", [INPUT_NAME]))
    variants = (
        (fp32, "1", lambda: FP32_ATOL, "fp32 ONNX graph of the Keras weights"),
        (int8, "2", lambda: round(INT8_ATOL_STEPS * onnx_output_scale(int8), 6),
         "ONNX Runtime static int8 (QDQ, per-channel, MinMax on the calibration split)"),
    )  # fmt: skip
    accuracies = {}
    for path, version, atol, variant in variants:
        card = write_card(
            path, runtime="onnx", version=version, specs=onnx_tensor_specs(path),
            outputs_eval=run_onnx(path, splits.x_eval), splits=splits, atol=atol(),
            description=describe(variant),
        )  # fmt: skip
        accuracies[path.name] = card_accuracy(card)
    return accuracies


def build_tflite(weights: list[tuple[np.ndarray, np.ndarray]], splits: Splits) -> dict[str, float]:
    """digits-fp32.tflite and the full-integer digits-int8.tflite; eval accuracy of each."""
    variants = (
        ("digits-fp32.tflite", "1", None, "fp32 TFLite"),
        ("digits-int8.tflite", "2", splits.x_calibration,
         "full-integer TFLite (int8 in/out, calibrated on the calibration split)"),
    )  # fmt: skip
    accuracies = {}
    for name, version, representative, variant in variants:
        path = HERE / name
        export_tflite(weights, path, representative)
        tflite = open_tflite(path)
        output = tflite.outputs[0]
        card = write_card(
            path, runtime="tflite", version=version, specs=(tflite.inputs, tflite.outputs),
            outputs_eval=tflite.run(splits.x_eval), splits=splits,
            atol=int8_atol(output) if output.quantization else FP32_ATOL,
            description=describe(variant),
        )  # fmt: skip
        accuracies[name] = card_accuracy(card)
    return accuracies


def card_accuracy(card: ModelCard) -> float:
    if card.reference is None or card.reference.accuracy is None:
        raise SystemExit(f"card of {card.name} {card.version} has no accuracy")
    return card.reference.accuracy


def build() -> None:
    splits = make_splits()
    save_splits(splits)
    keras_model = train_keras(splits)
    # Not committed: the input of `fleet model optimize --tf-model` and of distill.py.
    keras_model.save(REPO / "models" / "build" / "digits" / "digits.keras")
    weights = dense_weights(keras_model)
    accuracies = build_onnx(weights, splits)
    onnx_probs = run_onnx(HERE / "digits-fp32.onnx", splits.x_eval)
    keras_probs = keras_model.predict(splits.x_eval, verbose=0)
    if not np.allclose(onnx_probs, keras_probs, atol=1e-5):
        raise SystemExit("the ONNX export differs from the Keras model")
    accuracies |= build_tflite(weights, splits)

    print(f"splits: train {len(splits.y_train)}, calibration {len(splits.y_calibration)}, "
          f"eval {len(splits.y_eval)}")  # fmt: skip
    for name, accuracy in accuracies.items():
        size = (HERE / name).stat().st_size
        print(f"{name:22s} eval accuracy {accuracy:.4f}  size {size:7d} bytes")
    for fp32, int8 in (("digits-fp32.onnx", "digits-int8.onnx"),
                       ("digits-fp32.tflite", "digits-int8.tflite")):  # fmt: skip
        gap = accuracies[fp32] - accuracies[int8]
        if gap > 0.01:
            raise SystemExit(f"{int8} loses {gap:.4f} accuracy against {fp32} (limit 0.01)")


if __name__ == "__main__":
    build()
