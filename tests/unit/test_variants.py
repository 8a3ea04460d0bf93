"""One release, a variant per board: the signed variant fields, the agent's choice among the
variants, the publish CLI's variant spec, publishing several files in one targets version,
and the ONNX provider fallback loop."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from agent.errors import ModelLoadError
from agent.inference import registry as registry_module
from agent.inference.backends import BackendOptions
from agent.inference.backends.onnx import (
    ProviderFallback,
    provider_options,
    session_with_fallback,
)
from agent.inference.cardfile import load_card
from agent.inference.registry import ModelRegistry
from agent.ota.variants import Capabilities, choose_variant, providers_for
from edge_contract.card import card_path_for
from edge_contract.desired import parse_desired
from edge_contract.errors import UpdateError
from edge_contract.reasons import Reason
from edge_contract.release import CUSTOM_KEY, ModelRelease, release_from_custom
from fleet.errors import ReleaseInputError
from fleet.release.cli import release_files
from fleet.release.publish import VariantSpec, parse_variant, publish_model, publish_release
from fleet.release.repo import Repository
from tests.unit.test_contract_models import RELEASE

DIGITS = Path(__file__).resolve().parents[2] / "models" / "digits"
TRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"


def _variant(file_name: str = "digits.onnx", **fields: Any) -> ModelRelease:
    return ModelRelease.model_validate(RELEASE | {"file_name": file_name} | fields)


ORIN_FP16 = _variant("orin-fp16.onnx", hardware=["jetson-orin"], providers=[TRT, CUDA])
PI_INT8 = _variant("pi-int8.onnx", hardware=["pi4", "pi5"], precision="int8")
LITERT = _variant("any-int8.tflite", hardware=["*"], precision="int8")
ANY_FP32 = _variant("any-fp32.onnx", hardware=["*"], precision="fp32")
GENERIC = _variant("generic.onnx", hardware=["generic"])
ALL = [ORIN_FP16, PI_INT8, LITERT, ANY_FP32]

ORIN = Capabilities("jetson-orin", ("generic",), (TRT, CUDA, CPU), litert=False)
ORIN_CPU_ONLY = Capabilities("jetson-orin", ("generic",), (CPU,))
PI4 = Capabilities("pi4", ("generic", "aarch64"), (CPU,), litert=True)
PI4_LITERT_ONLY = Capabilities("pi4", (), (), litert=True)
LAPTOP = Capabilities("generic", ("generic", "x86_64"), (CPU,))


@pytest.mark.parametrize(
    ("variants", "device", "expected"),
    [
        (ALL, ORIN, ORIN_FP16),  # exact hardware and the best provider
        (ALL, ORIN_CPU_ONLY, ANY_FP32),  # the orin file needs TRT/CUDA: * on CPU instead
        (ALL, PI4, PI_INT8),  # exact hardware before *
        (ALL, PI4_LITERT_ONLY, LITERT),  # a board with LiteRT only
        (ALL, LAPTOP, ANY_FP32),  # ONNX Runtime's CPU before LiteRT
        ([ANY_FP32, GENERIC], LAPTOP, GENERIC),  # exact id before *
        ([ANY_FP32, GENERIC], PI4, GENERIC),  # an accepted id (ota.hardware_ids) before *
        ([ANY_FP32, _variant("trt.onnx", hardware=["*"], providers=[TRT])], ORIN, None),
    ],
)
def test_the_best_fitting_variant_is_chosen(
    variants: list[ModelRelease], device: Capabilities, expected: ModelRelease | None
) -> None:
    chosen = choose_variant(variants, device)
    if expected is None:  # both fit with * : the one built for TensorRT ranks higher
        assert chosen.file_name == "trt.onnx"
    else:
        assert chosen == expected


def test_no_fitting_variant_is_wrong_hardware_naming_the_device() -> None:
    with pytest.raises(UpdateError) as refused:
        choose_variant([ORIN_FP16, PI_INT8], LAPTOP)
    assert refused.value.reason == Reason.WRONG_HARDWARE
    assert "'generic'" in refused.value.detail
    assert "onnxruntime:CPUExecutionProvider" in refused.value.detail
    with pytest.raises(UpdateError, match="wrong_hardware"):
        choose_variant([ANY_FP32], PI4_LITERT_ONLY)  # no onnxruntime at all


def test_providers_to_open_a_variant_with() -> None:
    assert providers_for(ORIN_FP16, ORIN) == (TRT, CUDA)
    assert providers_for(ANY_FP32, ORIN) == (TRT, CUDA, CPU)
    assert providers_for(LITERT, PI4) == ()


def test_variant_fields_round_trip_through_the_signed_custom_fields() -> None:
    custom = ORIN_FP16.custom()
    assert custom[CUSTOM_KEY]["providers"] == [TRT, CUDA]
    read = release_from_custom(custom, target=ORIN_FP16.target_path)
    assert read == ORIN_FP16
    assert (read.variant_name, read.required_runtime) == ("orin-fp16", "onnxruntime")
    named = _variant(variant="orin", runtime="onnxruntime")
    assert release_from_custom(named.custom(), target=named.target_path).variant_name == "orin"


def test_a_release_without_variant_fields_reads_and_writes_as_before() -> None:
    """A pre-variant target (and one published without variant fields) has none of them."""
    old = release_from_custom({CUSTOM_KEY: RELEASE}, target="models/digits/1/digits.onnx")
    assert (old.variant, old.runtime, old.providers, old.precision) == (None, None, (), None)
    assert set(old.custom()[CUSTOM_KEY]) == set(RELEASE)


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"runtime": "tensorflow"}, "runtime"),
        ({"runtime": "litert"}, "cannot run digits.onnx"),
        ({"file_name": "d.tflite", "providers": [CPU]}, "providers are ONNX Runtime's"),
        ({"providers": ["OpenVINOExecutionProvider"]}, "providers"),
        ({"providers": [CPU, CPU]}, "twice"),
        ({"precision": "fp8"}, "precision"),
        ({"hardware": ["*", "pi4"]}, "cannot be listed with other ids"),
        ({"hardware": ["Pi 4"]}, "hardware"),
        ({"variant": "Bad Name"}, "variant"),
    ],
)
def test_bad_variant_fields_are_a_malformed_release(fields: dict[str, Any], problem: str) -> None:
    custom = {CUSTOM_KEY: RELEASE | fields}
    path = f"models/digits/1/{custom[CUSTOM_KEY]['file_name']}"
    with pytest.raises(UpdateError) as refused:
        release_from_custom(custom, target=path)
    assert refused.value.reason == Reason.MALFORMED_RELEASE
    assert problem in refused.value.detail


def test_the_variant_spec_of_the_publish_cli() -> None:
    spec = parse_variant("m/orin.onnx:hardware=jetson-orin:providers=tensorrt,cuda:precision=fp16")
    assert spec == VariantSpec(Path("m/orin.onnx"), ("jetson-orin",), None, (TRT, CUDA), "fp16")
    assert parse_variant("m/any.tflite") == VariantSpec(Path("m/any.tflite"))
    assert parse_variant("a.onnx:name=pi:hardware=pi4,pi5").hardware == ("pi4", "pi5")
    for bad, problem in [
        ("a.onnx:hardware", "not key=value"),
        ("a.onnx:board=pi4", "unknown variant field 'board'"),
        ("a.onnx:runtime=tf", "runtime 'tf'"),
        ("a.onnx:providers=openvino", "provider 'openvino'"),
        ("a.onnx:name=x:name=y", "twice"),
        (":hardware=pi4", "needs a file"),
    ]:
        with pytest.raises(ReleaseInputError, match=problem):
            parse_variant(bad)


def test_the_two_forms_of_model_publish() -> None:
    single = release_files("d.onnx", "digits", "3", [], [])
    assert single == ("digits", "3", [VariantSpec(Path("d.onnx"), ("*",))])
    assert release_files("d.onnx", "digits", "3", ["pi4"], [])[2][0].hardware == ("pi4",)
    two = release_files("digits@3", None, None, [], ["a.onnx:hardware=pi4", "b.onnx"])
    assert (two[0], two[1], [s.file.name for s in two[2]]) == ("digits", "3", ["a.onnx", "b.onnx"])
    with pytest.raises(ReleaseInputError, match="--name and --version"):
        release_files("d.onnx", None, "3", [], [])
    with pytest.raises(ReleaseInputError, match="NAME@VERSION"):
        release_files("digits", None, None, [], ["a.onnx"])
    with pytest.raises(ReleaseInputError, match="not --name"):
        release_files("digits@3", "digits", None, [], ["a.onnx"])


def test_a_release_with_two_variants_is_one_targets_version(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "repo")
    before = repo.timestamp_version
    releases = publish_release(
        repo,
        name="digits",
        version="3",
        variants=[
            parse_variant(f"{DIGITS}/digits-int8.onnx:hardware=pi4:precision=int8"),
            parse_variant(f"{DIGITS}/digits-fp32.onnx:precision=fp32"),
        ],
    )
    assert repo.timestamp_version == before + 1
    signed = repo.targets()
    read = [
        release_from_custom(signed[r.target_path].custom, target=r.target_path) for r in releases
    ]
    assert [(r.hardware, r.precision, r.release) for r in read] == [
        (("pi4",), "int8", 1),
        (("*",), "fp32", 1),
    ]
    with pytest.raises(ReleaseInputError, match=r"file name 'digits-fp32\.onnx'"):
        publish_release(
            repo,
            name="digits",
            version="4",
            variants=[VariantSpec(DIGITS / "digits-fp32.onnx")] * 2,
        )
    with pytest.raises(ReleaseInputError, match="runtime litert cannot run"):
        publish_release(
            repo,
            name="digits",
            version="4",
            variants=[VariantSpec(DIGITS / "digits-fp32.onnx", runtime="litert")],
        )
    assert repo.timestamp_version == before + 1  # nothing signed for the refused ones
    single = publish_model(
        repo, DIGITS / "digits-int8.onnx", name="digits", version="5", hardware=["generic"]
    )
    assert "variant" not in repo.targets()[single.target_path].custom[CUSTOM_KEY]


def test_a_provider_that_fails_falls_back_to_the_next() -> None:
    tried: list[list[str]] = []

    def create(providers: list[str]) -> str:
        tried.append(providers)
        if providers[0] != CPU:
            raise RuntimeError(f"{providers[0]} cannot be used\nstack...")
        return "session"

    session, fallbacks = session_with_fallback(create, [TRT, CUDA, CPU], model="digits")

    assert session == "session"
    assert tried == [[TRT, CUDA, CPU], [CUDA, CPU], [CPU]]
    assert fallbacks == (
        ProviderFallback(TRT, f"{TRT} cannot be used"),
        ProviderFallback(CUDA, f"{CUDA} cannot be used"),
    )


def test_tensorrt_gets_fp16_and_an_engine_cache(tmp_path: Path) -> None:
    cache = tmp_path / "trt"
    options = BackendOptions(tensorrt_fp16=True, tensorrt_cache_dir=cache)
    assert provider_options([TRT, CUDA, CPU], options) == [
        {
            "trt_fp16_enable": "True",
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": str(cache),
        },
        {},
        {},
    ]
    assert cache.is_dir()
    assert provider_options([TRT], BackendOptions()) == [{"trt_fp16_enable": "False"}]


def test_a_failure_on_the_last_provider_is_the_models() -> None:
    def create(providers: list[str]) -> str:
        raise ValueError("invalid protobuf")

    with pytest.raises(ValueError, match="invalid protobuf"):
        session_with_fallback(create, [CUDA, CPU], model="digits")


def test_a_variants_providers_are_tried_before_the_configured_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The slot's signed providers reach the backend first, then the agent's configured list."""
    seen: list[tuple[str, ...]] = []

    def capture(path: Path, runtime: str, options: BackendOptions, *, model: str) -> Any:
        seen.append(options.onnx_providers)
        raise ModelLoadError("captured", path=str(path))

    monkeypatch.setattr(registry_module, "open_backend", capture)
    registry = ModelRegistry(BackendOptions(onnx_providers=(CPU,)))
    card = load_card(card_path_for(DIGITS / "digits-fp32.onnx"))

    async def load(providers: tuple[str, ...]) -> None:
        with pytest.raises(ModelLoadError):
            await registry.load(DIGITS / "digits-fp32.onnx", card=card, providers=providers)

    asyncio.run(load((TRT, CUDA)))
    asyncio.run(load(()))
    assert seen == [(TRT, CUDA, CPU), (CPU,)]


def test_a_desired_state_may_name_the_release_without_a_target() -> None:
    """New controllers leave the target out for a release with variants; one naming a target
    (older controllers, single-file releases) still parses the same."""
    signed = {
        "device_id": "pi-01",
        "counter": 3,
        "expires": "2030-01-01T00:00:00Z",
        "action": "deploy",
        "model": {"name": "digits", "version": "3"},
    }
    envelope = json.dumps({"signed": signed, "signatures": []}).encode()
    assert parse_desired(envelope).state.model.target is None
    signed["model"] = {"name": "digits", "version": "2", "target": "models/digits/2/d.onnx"}
    envelope = json.dumps({"signed": signed, "signatures": []}).encode()
    assert parse_desired(envelope).state.model.target == "models/digits/2/d.onnx"
