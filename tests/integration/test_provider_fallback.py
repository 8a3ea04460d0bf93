"""A provider that is present in this onnxruntime build but fails to create the session falls
back to the next one, and the registry reports it as a ``provider_fallback`` event.

TensorRT and CUDA are not on this machine; the Azure execution provider is in every build and
creates sessions fine, so it is made to fail at session creation (the real InferenceSession
for every other provider list): the real provider list, the real ONNX Runtime and the real
registry do the rest."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import onnxruntime as ort
import pytest

from agent.inference.backends import BackendOptions
from agent.inference.backends import onnx as onnx_door
from agent.inference.registry import ModelRegistry

MODEL = Path(__file__).resolve().parents[2] / "models" / "digits" / "digits-fp32.onnx"
AZURE, CPU = "AzureExecutionProvider", "CPUExecutionProvider"


def test_a_present_provider_that_fails_falls_back_with_an_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert AZURE in ort.get_available_providers()
    real = ort.InferenceSession

    def session(path: str, options: Any, providers: list[str], **more: Any) -> Any:
        if providers[0] == AZURE:
            raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : azure endpoint not configured")
        return real(path, options, providers=providers, **more)

    monkeypatch.setattr(onnx_door.ort, "InferenceSession", session)
    events: list[tuple[str, dict[str, object]]] = []
    registry = ModelRegistry(
        BackendOptions(onnx_providers=(AZURE, CPU)),
        on_event=lambda name, fields: events.append((name, fields)),
    )

    async def load() -> None:
        await registry.load(MODEL)

    asyncio.run(load())

    fallbacks = [fields for name, fields in events if name == "provider_fallback"]
    assert fallbacks == [
        {
            "model": "digits",
            "version": "1",
            "provider": AZURE,
            "error": "[ONNXRuntimeError] : 1 : FAIL : azure endpoint not configured",
        }
    ]
    assert [name for name, _ in events][-1] == "model_loaded"  # the model serves anyway
