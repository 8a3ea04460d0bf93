"""The least server's request framing and answer (``bench.serving_floor``), without sockets."""

from __future__ import annotations

import json

import numpy as np

from bench.serving_floor import RequestFramer, content_length, predict_answer


def _request(body: bytes, header: bytes = b"Content-Length") -> bytes:
    return (
        b"POST /v1/models/m:predict HTTP/1.1\r\nHost: x\r\n%s: %d\r\n\r\n"
        % (
            header,
            len(body),
        )
        + body
    )


def test_a_request_split_anywhere_comes_out_once_and_whole() -> None:
    wire = _request(b'{"inputs": {"a": [[1, 2]]}}')
    for cut in range(1, len(wire)):
        framer = RequestFramer()
        assert framer.feed(wire[:cut]) == []
        assert framer.feed(wire[cut:]) == [b'{"inputs": {"a": [[1, 2]]}}']


def test_pipelined_requests_come_out_in_order() -> None:
    framer = RequestFramer()
    first, second = _request(b"[1]"), _request(b"[22]", b"content-length")
    assert framer.feed(first + second[:10]) == [b"[1]"]
    assert framer.feed(second[10:]) == [b"[22]"]


def test_a_head_without_a_length_has_an_empty_body() -> None:
    assert content_length(b"GET / HTTP/1.1\r\nHost: x") == 0
    assert RequestFramer().feed(b"GET / HTTP/1.1\r\n\r\n") == [b""]


def test_the_answer_is_the_models_output_in_the_agents_document_shape() -> None:
    seen: dict[str, np.ndarray] = {}

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        seen.update(feeds)
        return np.array([[0.5, -1.25]], dtype=np.float32)

    answer = predict_answer(run, "minilm")
    response = answer(b'{"inputs": {"input_ids": [[101, 7]], "attention_mask": [[1, 1]]}}')
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert content_length(b"HTTP/1.1 200 OK\r\n" + head.split(b"\r\n", 1)[1]) == len(body)
    assert seen["input_ids"].dtype == np.int64
    assert seen["input_ids"].tolist() == [[101, 7]]
    document = json.loads(body)
    assert document["outputs"] == [[0.5, -1.25]]
    assert document["model_spec"]["name"] == "minilm"
    assert len(document["prediction_ids"]) == 1
