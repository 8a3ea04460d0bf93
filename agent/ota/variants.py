"""Which variant of a release this device installs: the best its hardware and runtimes fit.

Pure: the device's ``Capabilities`` (its hardware id, the other ids it accepts, the ONNX
Runtime execution providers of its build, whether a LiteRT/TFLite runtime imports) and the
release's variants (each a signed target's ``ModelRelease``) in, the chosen one out.

Order, best first:

1. hardware: a variant naming this device's ``hardware_id`` before one naming another id the
   device accepts (``ota.hardware_ids``: ``generic``, the CPU arch), before ``*``;
2. runtime: ONNX Runtime by the best execution provider both the variant allows and the build
   has (TensorRT, then CUDA, then CPU), then LiteRT; a variant listing its providers beats
   one that takes any (it was built for them);
3. the variant name (a stable tie-break).

A variant whose hardware, runtime or providers the device lacks does not fit; when none fits,
``UpdateError(wrong_hardware)`` names the device's hardware id and runtimes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edge_contract.errors import UpdateError
from edge_contract.reasons import Reason
from edge_contract.release import ANY_HARDWARE, PROVIDER_ORDER, ModelRelease

LITERT_RANK = len(PROVIDER_ORDER)


@dataclass(frozen=True)
class Capabilities:
    """What this device can run."""

    hardware_id: str
    accepted_ids: tuple[str, ...] = ()  # further ids a variant may name (ota.hardware_ids)
    onnx_providers: tuple[str, ...] = ()  # empty: no onnxruntime in this build
    litert: bool = False

    @property
    def runtimes(self) -> list[str]:
        """The runtimes as reported in events: ``onnxruntime:<provider>``..., ``litert``."""
        found = [f"onnxruntime:{provider}" for provider in self.onnx_providers]
        return found + (["litert"] if self.litert else [])


def hardware_rank(variant: ModelRelease, device: Capabilities) -> int | None:
    """0: names this device's id; 1: another id it accepts; 2: ``*``; None: not for it."""
    if device.hardware_id in variant.hardware:
        return 0
    if set(device.accepted_ids) & set(variant.hardware):
        return 1
    if ANY_HARDWARE in variant.hardware:
        return 2
    return None


def runtime_rank(variant: ModelRelease, device: Capabilities) -> int | None:
    """The index of the best usable provider in ``PROVIDER_ORDER`` (LiteRT after them all);
    None when the device cannot run the variant."""
    if variant.required_runtime == "litert":
        return LITERT_RANK if device.litert else None
    allowed = variant.providers or PROVIDER_ORDER
    usable = [PROVIDER_ORDER.index(p) for p in allowed if p in device.onnx_providers]
    return min(usable) if usable else None


def providers_for(variant: ModelRelease, device: Capabilities) -> tuple[str, ...]:
    """The execution providers to open the variant with, best first (empty for LiteRT)."""
    if variant.required_runtime == "litert":
        return ()
    allowed = variant.providers or PROVIDER_ORDER
    return tuple(p for p in PROVIDER_ORDER if p in allowed and p in device.onnx_providers)


def choose_variant(variants: Sequence[ModelRelease], device: Capabilities) -> ModelRelease:
    """The best variant for ``device``; ``UpdateError(wrong_hardware)`` when none fits."""
    ranked: list[tuple[tuple[int, int, int, str], ModelRelease]] = []
    for variant in variants:
        hardware = hardware_rank(variant, device)
        runtime = runtime_rank(variant, device)
        if hardware is None or runtime is None:
            continue
        explicit = 0 if variant.providers else 1
        ranked.append(((hardware, runtime, explicit, variant.variant_name), variant))
    if not ranked:
        raise UpdateError(Reason.WRONG_HARDWARE, _no_fit(variants, device))
    return min(ranked, key=lambda entry: entry[0])[1]


def _no_fit(variants: Sequence[ModelRelease], device: Capabilities) -> str:
    offered = "; ".join(
        f"{v.variant_name}: hardware {list(v.hardware)}, {v.required_runtime}"
        + (f" {list(v.providers)}" if v.providers else "")
        for v in variants
    )
    return (
        f"no variant fits hardware {device.hardware_id!r} "
        f"(also {list(device.accepted_ids)}) with runtimes {device.runtimes or 'none'}; "
        f"offered: {offered or 'nothing'}"
    )
