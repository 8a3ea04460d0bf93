"""The REST edge's own metric families and the monitor's latency summary, as exposed."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from agent.inference.metrics import (
    GRPC_ERROR_REASONS,
    GRPC_SERVICES,
    REST_ERROR_REASONS,
    GrpcMetrics,
    RestMetrics,
    _QuantileSummary,
)


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
    }


def test_every_reason_is_exposed_from_zero() -> None:
    samples = _samples(RestMetrics(1024).render())
    for reason, status in REST_ERROR_REASONS.items():
        key = ("edge_rest_errors_total", (("code", str(status)), ("reason", reason)))
        assert samples[key] == 0
    assert samples[("edge_rest_body_budget_bytes", ())] == 1024


def test_refusals_are_counted_and_the_label_set_stays_bounded() -> None:
    metrics = RestMetrics(1024)
    metrics.refused("bad_json", 400)
    metrics.refused("bad_json", 400)
    metrics.refused("anything a client chose", 400)
    metrics.refused("busy", 418)  # a status the reason does not have
    samples = _samples(metrics.render())
    assert samples[("edge_rest_errors_total", (("code", "400"), ("reason", "bad_json")))] == 2
    assert samples[("edge_rest_errors_total", (("code", "400"), ("reason", "other")))] == 1
    assert samples[("edge_rest_errors_total", (("code", "418"), ("reason", "other")))] == 1
    reasons = {labels for (name, labels) in samples if name == "edge_rest_errors_total"}
    assert len(reasons) == len(REST_ERROR_REASONS) + 2


def test_latency_quantiles_are_a_summary_with_cumulative_count_and_sum() -> None:
    family = _QuantileSummary(
        "edge_model_latency_quantile_seconds", "q", ["model", "version", "quantile"]
    )
    family.add_metric(["m", "1", "0.5"], 0.002)
    family.add_totals(["m", "1"], 7, 0.5)
    assert family.type == "summary"
    names = [(sample.name, sample.labels) for sample in family.samples]
    assert names == [
        ("edge_model_latency_quantile_seconds", {"model": "m", "version": "1", "quantile": "0.5"}),
        ("edge_model_latency_quantile_seconds_count", {"model": "m", "version": "1"}),
        ("edge_model_latency_quantile_seconds_sum", {"model": "m", "version": "1"}),
    ]


def test_grpc_refusals_and_unread_calls_keep_a_bounded_label_set() -> None:
    metrics = GrpcMetrics()
    v2 = "inference.GRPCInferenceService"
    metrics.refused(v2, "too_many_calls", "RESOURCE_EXHAUSTED")
    metrics.refused("/a service a client chose", "unknown_method", "UNIMPLEMENTED")
    metrics.ended_unread(v2)
    metrics.ended_unread("another service a client chose")
    samples = _samples(metrics.render())
    for reason, code in GRPC_ERROR_REASONS.items():  # each from zero, on every service
        key = (("code", code), ("reason", reason), ("service", v2))
        assert ("edge_grpc_errors_total", key) in samples
    busy = (("code", "RESOURCE_EXHAUSTED"), ("reason", "too_many_calls"), ("service", v2))
    unknown = (("code", "UNIMPLEMENTED"), ("reason", "unknown_method"), ("service", "other"))
    assert samples[("edge_grpc_errors_total", busy)] == 1
    assert samples[("edge_grpc_errors_total", unknown)] == 1
    assert samples[("edge_grpc_unread_calls_total", (("service", v2),))] == 1
    assert samples[("edge_grpc_unread_calls_total", (("service", "other"),))] == 1
    unread = {labels for (name, labels) in samples if name == "edge_grpc_unread_calls_total"}
    assert len(unread) == len(GRPC_SERVICES) + 1
