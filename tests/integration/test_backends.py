"""The runtime backends on real runtimes: the committed digits models through ONNX Runtime and
LiteRT, small graphs built here with onnx.helper for the odd cases, and every bad file and
bad input the issue names."""

from __future__ import annotations

import importlib.util
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import ai_edge_litert.interpreter as litert
import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from structlog.testing import capture_logs

from agent.errors import InvalidInputError, ModelLoadError, ModelRunError, ModelSignatureError
from agent.inference.backends import (
    Backend,
    BackendOptions,
    Tensor,
    check_signature,
    open_backend,
)
from agent.inference.backends.litert import TfliteBackend, _invoke_by_row, _TensorNameRunner
from agent.inference.cardfile import load_card
from agent.inference.quantize import dequantize, quantize
from edge_contract.card import ModelCard, Quantization, Runtime, card_path_for

pytestmark = pytest.mark.integration

DIGITS = Path(__file__).resolve().parents[2] / "models" / "digits"
MODELS: list[tuple[str, Runtime]] = [
    ("digits-fp32.onnx", "onnx"),
    ("digits-int8.onnx", "onnx"),
    ("digits-fp32.tflite", "tflite"),
    ("digits-int8.tflite", "tflite"),
]
OPTIONS = BackendOptions()

EvalSplit = tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]  # pixels/16 [N, 64], labels [N]


@pytest.fixture(scope="module")
def eval_split() -> EvalSplit:
    with np.load(DIGITS / "data" / "eval.npz") as data:
        return data["x"], data["y"]


def open_digits(file: str, runtime: Runtime, options: BackendOptions = OPTIONS) -> Backend:
    return open_backend(DIGITS / file, runtime, options, model="digits")


def accuracy(backend: Backend, x: npt.NDArray[np.float32], y: npt.NDArray[np.int64]) -> float:
    probabilities = backend.run({"pixels": x})["probabilities"]
    return float((probabilities.argmax(axis=1) == y).mean())


def save_graph(
    path: Path,
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: list[onnx.TensorProto] | None = None,
) -> Path:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, initializer=initializers or [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small ONNX graphs for the cases the digits models do not cover."""
    folder = tmp_path_factory.mktemp("graphs")
    floats = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    result = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 4])
    doubled = helper.make_tensor_value_info("doubled", TensorProto.INT64, ["batch", 4])
    doubles = helper.make_tensor_value_info("x", TensorProto.DOUBLE, [1, 3])
    double_out = helper.make_tensor_value_info("y", TensorProto.DOUBLE, [1, 3])
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [4, -1])
    return {
        # Log of a negative number is NaN, of zero -inf: a model that misbehaves on real input.
        "log": save_graph(
            folder / "log.onnx", [helper.make_node("Log", ["x"], ["y"])], [floats], [result]
        ),
        "int64": save_graph(
            folder / "int64.onnx",
            [helper.make_node("Add", ["ids", "ids"], ["doubled"])],
            [ids],
            [doubled],
        ),
        "double": save_graph(
            folder / "double.onnx", [helper.make_node("Neg", ["x"], ["y"])], [doubles], [double_out]
        ),
        # Reshaping 3 values per row into 4 rows fails inside the runtime, after validation.
        "reshape": save_graph(
            folder / "reshape.onnx",
            [helper.make_node("Reshape", ["x", "shape"], ["y"])],
            [floats],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, None])],
            [shape],
        ),
    }


class TestReferenceModels:
    @pytest.mark.parametrize(("file", "runtime"), MODELS)
    def test_matches_its_card(
        self,
        file: str,
        runtime: Runtime,
        eval_split: EvalSplit,
    ) -> None:
        """Signature, golden output and held-out accuracy all agree with the committed card."""
        card = load_card(card_path_for(DIGITS / file))
        backend = open_digits(file, runtime)
        check_signature(card, backend)
        assert card.golden is not None
        assert card.reference is not None
        assert card.reference.accuracy is not None
        golden_in = {
            name: np.array(value, np.float32) for name, value in card.golden.inputs.items()
        }
        outputs = backend.run(golden_in)
        for name, expected in card.golden.outputs.items():
            assert outputs[name].dtype == np.float32
            np.testing.assert_allclose(
                outputs[name], np.array(expected), rtol=0, atol=card.golden.atol
            )
        x, y = eval_split
        # int8 kernels may round differently on another CPU: one example may flip there.
        tolerance = 1e-6 if "fp32" in file else 1 / len(y) + 1e-6
        assert accuracy(backend, x, y) == pytest.approx(card.reference.accuracy, abs=tolerance)

    @pytest.mark.parametrize("suffix", ["onnx", "tflite"])
    def test_int8_is_within_one_point_of_fp32(self, suffix: str, eval_split: EvalSplit) -> None:
        """Post-training quantization costs at most 1 point of top-1 accuracy."""
        runtime: Runtime = "onnx" if suffix == "onnx" else "tflite"
        x, y = eval_split
        fp32 = accuracy(open_digits(f"digits-fp32.{suffix}", runtime), x, y)
        int8 = accuracy(open_digits(f"digits-int8.{suffix}", runtime), x, y)
        assert fp32 - int8 <= 0.01

    def test_int8_tflite_speaks_float(self, eval_split: EvalSplit) -> None:
        """The int8 file takes and returns int8; the backend converts with the file's own
        parameters, giving exactly what the bare interpreter gives on the quantized input."""
        backend = open_digits("digits-int8.tflite", "tflite")
        pixels, probabilities = backend.inputs[0], backend.outputs[0]
        assert pixels.dtype == "int8"
        assert isinstance(pixels.quantization, Quantization)
        assert isinstance(probabilities.quantization, Quantization)
        x = eval_split[0][:16]
        interpreter = litert.Interpreter(model_path=str(backend.path))
        runner = interpreter.get_signature_runner("serving_default")
        raw = runner(
            pixels=quantize(
                x,
                scale=pixels.quantization.scale,
                zero_point=pixels.quantization.zero_point,
                dtype=np.int8,
            )
        )["probabilities"]
        assert raw.dtype == np.int8
        expected = dequantize(
            raw,
            scale=probabilities.quantization.scale,
            zero_point=probabilities.quantization.zero_point,
        )
        got = backend.run({"pixels": x})["probabilities"]
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, expected)


class TestBatches:
    @pytest.mark.parametrize(("file", "runtime"), MODELS)
    def test_batch_rows_equal_single_rows(
        self,
        file: str,
        runtime: Runtime,
        eval_split: EvalSplit,
    ) -> None:
        """A batch of N gives, row for row, what N batches of one give; sizes may change."""
        backend = open_digits(file, runtime)
        x = eval_split[0][:9]
        singles = np.concatenate(
            [backend.run({"pixels": x[i : i + 1]})["probabilities"] for i in range(9)]
        )
        for size in (9, 3, 9):
            batch = backend.run({"pixels": x[:size]})["probabilities"]
            assert batch.shape == (size, 10)
            np.testing.assert_allclose(batch, singles[:size], rtol=0, atol=1e-6)

    def test_tflite_fixed_at_batch_one_still_takes_batches(
        self, tmp_path: Path, eval_split: EvalSplit
    ) -> None:
        """A file whose tensors are all fixed at batch 1 ([1, 64], as some converters write)
        is declared with batch -1 and runs a batch like the dynamic-batch file."""
        dynamic = DIGITS / "digits-int8.tflite"
        fixed = tmp_path / "fixed-batch.tflite"
        # Every [-1, N] shape signature in the flatbuffer is the int32 vector (2, -1, N).
        fixed.write_bytes(
            dynamic.read_bytes().replace(struct.pack("<ii", 2, -1), struct.pack("<ii", 2, 1))
        )
        fixed_details = litert.Interpreter(model_path=str(fixed)).get_input_details()[0]
        assert fixed_details["shape_signature"].tolist() == [1, 64]
        backend = open_backend(fixed, "tflite", OPTIONS, model="digits")
        assert backend.inputs[0].shape == (-1, 64)
        x = eval_split[0][:12]
        expected = open_backend(dynamic, "tflite", OPTIONS, model="digits").run({"pixels": x})
        np.testing.assert_array_equal(
            backend.run({"pixels": x})["probabilities"], expected["probabilities"]
        )

    def test_row_by_row_fallback_equals_one_invoke(self, eval_split: EvalSplit) -> None:
        """The fallback for graphs that cannot resize gives what a batched invoke gives."""
        runner = litert.Interpreter(
            model_path=str(DIGITS / "digits-fp32.tflite")
        ).get_signature_runner("serving_default")
        x = eval_split[0][:5]
        by_row = _invoke_by_row(runner, {"pixels": x}, 5)
        np.testing.assert_allclose(
            by_row["probabilities"], runner(pixels=x)["probabilities"], atol=1e-6
        )

    def test_files_without_a_signature_use_tensor_names(self, eval_split: EvalSplit) -> None:
        """The tensor-name path (for files with no serving_default signature) names the
        file's tensors, resizes for each batch size and converts like the signature path."""
        path = DIGITS / "digits-int8.tflite"
        interpreter = litert.Interpreter(model_path=str(path))
        interpreter.allocate_tensors()
        by_name = _TensorNameRunner(interpreter)
        details = (by_name.input_details, by_name.output_details)
        backend = TfliteBackend(
            interpreter, by_name, details, path=path, model="digits", runtime="litert"
        )
        (pixels,), (probabilities,) = backend.inputs, backend.outputs
        assert pixels.name == interpreter.get_input_details()[0]["name"]
        assert pixels.quantization is not None
        signature_backend = open_digits("digits-int8.tflite", "tflite")
        x = eval_split[0]
        for size in (5, 1, 5, 8):
            expected = signature_backend.run({"pixels": x[:size]})["probabilities"]
            got = backend.run({pixels.name: x[:size]})[probabilities.name]
            np.testing.assert_array_equal(got, expected)

    @pytest.mark.parametrize(("file", "runtime"), [MODELS[1], MODELS[3]])
    def test_concurrent_runs_give_serial_results(
        self,
        file: str,
        runtime: Runtime,
        eval_split: EvalSplit,
    ) -> None:
        """Threads sharing one backend (TFLite: behind its lock) each get their own rows."""
        backend = open_digits(file, runtime)
        x = eval_split[0][:40]
        serial = [backend.run({"pixels": x[i : i + 1 + i % 3]})["probabilities"] for i in range(32)]
        with ThreadPoolExecutor(max_workers=4) as pool:
            threaded = list(
                pool.map(lambda i: backend.run({"pixels": x[i : i + 1 + i % 3]}), range(32))
            )
        for expected, got in zip(serial, threaded, strict=True):
            np.testing.assert_array_equal(got["probabilities"], expected)


class TestOnnxOptions:
    def test_missing_providers_are_skipped_with_one_log_line(self, eval_split: EvalSplit) -> None:
        """A Jetson's provider list on a CPU-only build: one warning names what is missing,
        the session falls back to CPU and gives the same answer."""
        wanted = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
        missing = [name for name in wanted if name not in ort.get_available_providers()]
        assert missing == list(wanted[:2]), "this test needs a CPU-only onnxruntime build"
        options = BackendOptions(onnx_providers=wanted, intra_op_threads=1, inter_op_threads=1)
        with capture_logs() as logs:
            backend = open_digits("digits-fp32.onnx", "onnx", options)
        warnings = [entry for entry in logs if entry["log_level"] == "warning"]
        assert len(warnings) == 1
        assert warnings[0]["missing"] == missing
        assert warnings[0]["using"] == ["CPUExecutionProvider"]
        assert backend.runtime == f"onnxruntime {ort.__version__} (CPUExecutionProvider)"
        x = eval_split[0][:4]
        default = open_digits("digits-fp32.onnx", "onnx").run({"pixels": x})["probabilities"]
        np.testing.assert_allclose(backend.run({"pixels": x})["probabilities"], default, atol=1e-6)

    def test_available_providers_log_nothing(self) -> None:
        with capture_logs() as logs:
            open_digits("digits-fp32.onnx", "onnx")
        assert [entry for entry in logs if entry["log_level"] == "warning"] == []


def flip_structure(data: bytes) -> bytes:
    """The first 4 bytes (a flatbuffer's root offset, a protobuf's first tag) set to 0xff,
    the TFL3 identifier left alone so the runtime itself has to notice."""
    return b"\xff" * 4 + data[4:]


BAD_FILES: list[tuple[str, Callable[[bytes], bytes], str]] = [
    ("corrupt", flip_structure, "cannot load the model"),
    ("truncated", lambda data: data[: len(data) // 2], "cannot load the model"),
    ("empty", lambda data: b"", "empty"),
]


class TestBadFiles:
    @pytest.mark.parametrize(("file", "runtime"), [MODELS[0], MODELS[3]])
    @pytest.mark.parametrize(("damage", "spoil", "message"), BAD_FILES)
    def test_damaged_file_is_a_load_error(
        self,
        tmp_path: Path,
        file: str,
        runtime: Runtime,
        damage: str,
        spoil: Callable[[bytes], bytes],
        message: str,
    ) -> None:
        """Flipped, cut or empty: ModelLoadError naming the file and the problem."""
        path = tmp_path / f"{damage}-{file}"
        path.write_bytes(spoil((DIGITS / file).read_bytes()))
        with pytest.raises(ModelLoadError, match=message) as error:
            open_backend(path, runtime, OPTIONS, model="digits")
        assert error.value.path == str(path)

    @pytest.mark.parametrize(
        ("file", "runtime", "message"),
        [
            ("digits-fp32.tflite", "onnx", "TFLite flatbuffer .*use runtime 'tflite'"),
            ("digits-fp32.onnx", "tflite", "not a TFLite flatbuffer.*use runtime 'onnx'"),
        ],
    )
    def test_wrong_runtime_for_the_file(self, file: str, runtime: Runtime, message: str) -> None:
        with pytest.raises(ModelLoadError, match=message):
            open_digits(file, runtime)

    @pytest.mark.parametrize("runtime", ["onnx", "tflite"])
    def test_missing_file(self, tmp_path: Path, runtime: Runtime) -> None:
        with pytest.raises(ModelLoadError, match="does not exist"):
            open_backend(tmp_path / "nothing-here", runtime, OPTIONS, model="digits")

    def test_unsupported_tensor_type(self, graphs: dict[str, Path]) -> None:
        """A float64 graph loads in onnxruntime but has no card dtype: refused at load."""
        with pytest.raises(ModelLoadError, match=r"tensor\(double\)"):
            open_backend(graphs["double"], "onnx", OPTIONS, model="double")

    def test_forced_interpreter_that_is_not_installed(self) -> None:
        """tflite-runtime cannot live beside NumPy 2; forcing it here names it."""
        assert importlib.util.find_spec("tflite_runtime") is None, "runs where NumPy 2 is installed"
        options = BackendOptions(tflite_runtime="tflite-runtime")
        with pytest.raises(ModelLoadError, match="tflite-runtime"):
            open_digits("digits-fp32.tflite", "tflite", options)


class TestBadInput:
    @pytest.mark.parametrize(("file", "runtime"), [MODELS[0], MODELS[3]])
    @pytest.mark.parametrize(
        ("feeds", "message"),
        [
            ({"pixels": np.zeros((2, 63), np.float32)}, r"shape \[2, 63\], expected \[-1, 64\]"),
            ({"pixels": np.zeros(64, np.float32)}, r"shape \[64\], expected \[-1, 64\]"),
            ({"pixels": np.zeros((0, 64), np.float32)}, "empty batch"),
            ({"pixels": np.full((1, 64), "a")}, "dtype <U1, expected float32"),
            ({"pixels": np.zeros((1, 64), bool)}, "dtype bool, expected float32"),
            ({"image": np.zeros((1, 64), np.float32)}, "unknown input 'image'"),
            ({}, "missing input 'pixels'"),
        ],
    )
    def test_refused_before_the_runtime(
        self, file: str, runtime: Runtime, feeds: dict[str, Tensor], message: str
    ) -> None:
        backend = open_digits(file, runtime)
        with pytest.raises(InvalidInputError, match=message) as error:
            backend.run(feeds)
        assert error.value.model == "digits"

    @pytest.mark.parametrize(("file", "runtime"), [MODELS[0], MODELS[3]])
    def test_exact_conversions_are_accepted_for_float_inputs(
        self,
        file: str,
        runtime: Runtime,
        eval_split: EvalSplit,
    ) -> None:
        """JSON numbers arrive as float64 or int64, and arrays may be strided views: all
        give what the contiguous float32 array gives (quantized input included)."""
        backend = open_digits(file, runtime)
        x = eval_split[0][:3]
        as_float32 = backend.run({"pixels": x})["probabilities"]
        for value in (x.astype(np.float64), np.asfortranarray(x), np.repeat(x, 2, axis=1)[:, ::2]):
            np.testing.assert_array_equal(
                backend.run({"pixels": value})["probabilities"], as_float32
            )
        ones = backend.run({"pixels": np.ones((1, 64), np.float32)})["probabilities"]
        for integers in (np.ones((1, 64), np.int64), [[1] * 64]):
            np.testing.assert_array_equal(backend.run({"pixels": integers})["probabilities"], ones)

    def test_integer_input_takes_ints_not_floats(self, graphs: dict[str, Path]) -> None:
        backend = open_backend(graphs["int64"], "onnx", OPTIONS, model="ids")
        assert backend.inputs[0].dtype == "int64"
        ids = np.array([[1, 2, 3, 4]], np.int32)
        assert backend.run({"ids": ids})["doubled"].tolist() == [[2, 4, 6, 8]]
        with pytest.raises(InvalidInputError, match="dtype float32, expected int64"):
            backend.run({"ids": ids.astype(np.float32)})
        with pytest.raises(InvalidInputError, match="outside the range of int64"):
            backend.run({"ids": np.array([[2**63, 0, 0, 0]], np.uint64)})

    def test_nan_for_a_quantized_input(self) -> None:
        """NaN has no int8 value: refused rather than quantized to an arbitrary number."""
        backend = open_digits("digits-int8.tflite", "tflite")
        pixels = np.zeros((1, 64), np.float32)
        pixels[0, 5] = np.nan
        with pytest.raises(InvalidInputError, match="NaN"):
            backend.run({"pixels": pixels})


class TestRunFailures:
    def test_nan_outputs_reach_the_caller(self, graphs: dict[str, Path]) -> None:
        """The backend passes NaN/Inf on as computed; the registry decides it is an error."""
        backend = open_backend(graphs["log"], "onnx", OPTIONS, model="log")
        outputs = backend.run({"x": np.array([[-1.0, 0.0, 1.0]], np.float32)})["y"]
        assert np.isnan(outputs[0, 0])
        assert outputs[0, 1] == -np.inf
        assert outputs[0, 2] == 0.0

    def test_runtime_failure_is_a_model_run_error(self, graphs: dict[str, Path]) -> None:
        backend = open_backend(graphs["reshape"], "onnx", OPTIONS, model="reshape")
        with pytest.raises(ModelRunError, match="onnxruntime failed") as error:
            backend.run({"x": np.zeros((1, 3), np.float32)})
        assert error.value.model == "reshape"

    @pytest.mark.parametrize(("file", "runtime"), [MODELS[0], MODELS[2]])
    def test_closed_backend_refuses_to_run(self, file: str, runtime: Runtime) -> None:
        backend = open_digits(file, runtime)
        backend.close()
        with pytest.raises(ModelRunError, match="closed"):
            backend.run({"pixels": np.zeros((1, 64), np.float32)})


class TestCheckSignature:
    @pytest.mark.parametrize(("file", "runtime"), [MODELS[0], MODELS[3]])
    def test_every_difference_is_listed(self, file: str, runtime: Runtime) -> None:
        """Renamed output, other dtype, other shape, other quantization: all four named."""
        card = load_card(card_path_for(DIGITS / file))
        backend = open_digits(file, runtime)
        pixels = card.inputs[0].model_copy(
            update={
                "dtype": "uint8",
                "shape": (-1, 8, 8),
                "quantization": Quantization(scale=0.5, zero_point=3),
            }
        )
        output = card.outputs[0].model_copy(update={"name": "scores"})
        wrong = card.model_copy(update={"inputs": (pixels,), "outputs": (output,)})
        with pytest.raises(ModelSignatureError) as error:
            check_signature(wrong, backend)
        message = str(error.value)
        for expected in (
            "input 'pixels' dtype",
            r"input 'pixels' shape: card [-1, 8, 8], file [-1, 64]",
            "input 'pixels' quantization",
            "output 'scores' is in the card, not in the file",
            "output 'probabilities' is in the file, not in the card",
        ):
            assert expected in message

    def test_scale_tolerance_is_relative(self) -> None:
        """A scale within 1e-6 relative (a float32 round trip) matches; 1e-4 off does not."""
        card = load_card(card_path_for(DIGITS / "digits-int8.tflite"))
        backend = open_digits("digits-int8.tflite", "tflite")
        check_signature(_with_input_scale(card, 1 + 1e-7), backend)
        with pytest.raises(ModelSignatureError, match="quantization"):
            check_signature(_with_input_scale(card, 1 + 1e-4), backend)

    def test_any_size_matches_both_ways(self) -> None:
        """A card fixed at batch 1 matches a file with batch -1."""
        card = load_card(card_path_for(DIGITS / "digits-fp32.onnx"))
        pixels = card.inputs[0].model_copy(update={"shape": (1, 64)})
        check_signature(
            card.model_copy(update={"inputs": (pixels,)}), open_digits("digits-fp32.onnx", "onnx")
        )


def _with_input_scale(card: ModelCard, factor: float) -> ModelCard:
    pixels = card.inputs[0]
    assert pixels.quantization is not None
    scaled = pixels.quantization.model_copy(update={"scale": pixels.quantization.scale * factor})
    return card.model_copy(update={"inputs": (pixels.model_copy(update={"quantization": scaled}),)})
