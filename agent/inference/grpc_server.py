"""The gRPC front ends of the local inference service: Open Inference Protocol v2
(``inference.GRPCInferenceService``) and TensorFlow Serving's ``PredictionService`` and
``ModelService``, on one port, on the agent's event loop (``grpc.aio``).

The one module that imports grpc. Thin: each method parses its request (the bytes are
parsed here, so that garbage is an INVALID_ARGUMENT counted as ``bad_message`` rather than
gRPC's own INTERNAL), converts it with the pure modules ``grpc_v2`` / ``grpc_tfs``, and calls
the one request path, ``ModelRegistry.predict``, whose observer is the model monitor: the
same input checks, monitoring, hot swap and back-pressure as the REST API. Errors are status
codes (INVALID_ARGUMENT, NOT_FOUND, UNAVAILABLE for a full queue, INTERNAL), counted by
reason in ``GrpcMetrics``, and so are the refusals gRPC would make on its own: a method not
served (UNIMPLEMENTED, ``unknown_method``) and a call over ``max_concurrent_rpcs`` in progress
(RESOURCE_EXHAUSTED, ``too_many_calls``), both refused by ``CallGate``; a request
message over ``max_message_bytes`` (RESOURCE_EXHAUSTED, ``too_large``), refused by the method
on the raw bytes before they are parsed. gRPC's own limits stay as backstops above ours
(``HARD_LIMIT_FACTOR`` times each). What those refuse never reaches a handler, and grpcio
does not say why: such calls are counted only as ``unread`` (with calls whose client gave up
before sending its message; see ``_AdmittedCall``). Request messages in memory stay under
``max_concurrent_rpcs`` times the hard message limit. Messages above 256 KiB are parsed
and converted in a worker thread, as the REST API does with large bodies.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, cast

import grpc
import structlog
from google.protobuf.message import DecodeError, Message

import agent
from agent.errors import InferenceError, InvalidInputError, ServiceBusyError, UnknownModelError
from agent.inference import grpc_tfs, grpc_v2
from agent.inference.metrics import GrpcMetrics
from agent.inference.protos import oip_v2_pb2 as v2_pb
from agent.inference.protos import tf_serving_pb2 as tfs_pb
from agent.inference.registry import ModelRegistry
from agent.loop.eventloop import off_loop_if

log = structlog.get_logger("agent.inference.grpc")

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_CONCURRENT_RPCS = 16
_OFFLOAD_MESSAGE_BYTES = 256 * 1024
_GRACE_S = 2.0
# gRPC's own limits sit this many times above ours: backstops that are not reached in normal
# refusals (ours answer first, and counted). A message between the two limits is refused by
# us, counted; one over gRPC's is refused by its C core, which never hands it to Python.
HARD_LIMIT_FACTOR = 2
V2_SERVICE = "inference.GRPCInferenceService"
PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"

M = TypeVar("M", bound=Message)
R = TypeVar("R", bound=Message)
_Work = Callable[[M], Awaitable[Message]]


@dataclass
class GrpcServer:
    """A running gRPC service; ``close()`` stops it (calls in progress get a short grace)."""

    server: grpc.aio.Server
    port: int
    address: str
    metrics: GrpcMetrics
    gate: CallGate

    async def close(self) -> None:
        await self.server.stop(_GRACE_S)


async def start_grpc(
    registry: ModelRegistry,
    *,
    host: str = "127.0.0.1",
    port: int = 8500,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    max_concurrent_rpcs: int = DEFAULT_MAX_CONCURRENT_RPCS,
    metrics: GrpcMetrics | None = None,
) -> GrpcServer:
    """Serve both APIs on ``host:port`` (0: any free port); OSError if it cannot bind."""
    metrics = metrics or GrpcMetrics()
    gate = CallGate(metrics, max_concurrent_rpcs)
    server = grpc.aio.server(
        interceptors=[gate],
        # Counts the calls the gate refuses too (they end at once, unread), hence the room.
        maximum_concurrent_rpcs=HARD_LIMIT_FACTOR * max_concurrent_rpcs,
        options=[
            ("grpc.max_receive_message_length", HARD_LIMIT_FACTOR * max_message_bytes),
            ("grpc.so_reuseport", 0),  # a port in use is an error, not a second listener
        ],
    )
    api = _Api(registry, metrics, max_message_bytes)
    server.add_generic_rpc_handlers(api.handlers())
    shown_host = f"[{host}]" if ":" in host else host
    address = f"{shown_host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:  # grpc.aio's way of saying the port is taken
        raise OSError(f"cannot bind {address}: {exc}") from exc
    await server.start()
    return GrpcServer(server, bound, f"{shown_host}:{bound}", metrics, gate)


class _Api:
    """The methods of the three services, bound to one registry."""

    def __init__(
        self, registry: ModelRegistry, metrics: GrpcMetrics, max_message_bytes: int
    ) -> None:
        self._registry = registry
        self._metrics = metrics
        self._max_message_bytes = max_message_bytes

    def handlers(self) -> tuple[grpc.GenericRpcHandler, ...]:
        v2: dict[str, tuple[type[Message], _Work[Any]]] = {
            "ServerLive": (v2_pb.ServerLiveRequest, self.server_live),
            "ServerReady": (v2_pb.ServerReadyRequest, self.server_ready),
            "ModelReady": (v2_pb.ModelReadyRequest, self.model_ready),
            "ServerMetadata": (v2_pb.ServerMetadataRequest, self.server_metadata),
            "ModelMetadata": (v2_pb.ModelMetadataRequest, self.v2_model_metadata),
            "ModelInfer": (v2_pb.ModelInferRequest, self.model_infer),
        }
        prediction: dict[str, tuple[type[Message], _Work[Any]]] = {
            "Predict": (tfs_pb.PredictRequest, self.predict),
            "GetModelMetadata": (tfs_pb.GetModelMetadataRequest, self.tfs_model_metadata),
        }
        status: dict[str, tuple[type[Message], _Work[Any]]] = {
            "GetModelStatus": (tfs_pb.GetModelStatusRequest, self.model_status),
        }
        return tuple(
            grpc.method_handlers_generic_handler(
                service,
                {
                    name: grpc.unary_unary_rpc_method_handler(
                        self._method(service, request_type, work),
                        response_serializer=_serialize,
                    )
                    for name, (request_type, work) in methods.items()
                },
            )
            for service, methods in (
                (V2_SERVICE, v2),
                (PREDICTION_SERVICE, prediction),
                (MODEL_SERVICE, status),
            )
        )

    def _method(
        self, service: str, request_type: type[Message], work: _Work[Any]
    ) -> Callable[[bytes, grpc.aio.ServicerContext[bytes, Message]], Awaitable[Message]]:
        async def handle(raw: bytes, context: grpc.aio.ServicerContext[bytes, Message]) -> Message:
            if len(raw) > self._max_message_bytes:
                self._metrics.refused(service, "too_large", "RESOURCE_EXHAUSTED")
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"the request message is {len(raw)} bytes, over the limit "
                    f"({self._max_message_bytes})",
                )
            try:
                request = await off_loop_if(
                    len(raw) > _OFFLOAD_MESSAGE_BYTES, request_type.FromString, raw
                )
                return await work(request)
            except DecodeError as exc:
                code, reason, message = (
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "bad_message",
                    f"the request is not a {request_type.DESCRIPTOR.full_name}: {exc}",
                )
            except Exception as exc:
                code, reason, message = _refusal(service, exc)
            self._metrics.refused(service, reason, code.name)
            await context.abort(code, message)
            raise AssertionError("unreachable: abort raises")  # for the type checker

        return handle

    # -- Open Inference Protocol v2 --------------------------------------------------------

    async def server_live(self, _: v2_pb.ServerLiveRequest) -> v2_pb.ServerLiveResponse:
        return v2_pb.ServerLiveResponse(live=True)

    async def server_ready(self, _: v2_pb.ServerReadyRequest) -> v2_pb.ServerReadyResponse:
        # Ready once a model serves: what a client can do anything with.
        return v2_pb.ServerReadyResponse(ready=bool(self._registry.serving()))

    async def model_ready(self, request: v2_pb.ModelReadyRequest) -> v2_pb.ModelReadyResponse:
        try:
            self._registry.card(request.name, grpc_v2.version_of(request.version))
        except UnknownModelError:
            return v2_pb.ModelReadyResponse(ready=False)
        return v2_pb.ModelReadyResponse(ready=True)

    async def server_metadata(self, _: v2_pb.ServerMetadataRequest) -> v2_pb.ServerMetadataResponse:
        return grpc_v2.server_metadata(agent.__version__)

    async def v2_model_metadata(
        self, request: v2_pb.ModelMetadataRequest
    ) -> v2_pb.ModelMetadataResponse:
        card = self._registry.card(request.name, grpc_v2.version_of(request.version))
        return grpc_v2.model_metadata(card, self._registry.status(request.name))

    async def model_infer(self, request: v2_pb.ModelInferRequest) -> v2_pb.ModelInferResponse:
        name, version = request.model_name, grpc_v2.version_of(request.model_version)
        card = self._registry.card(name, version)  # NOT_FOUND before any conversion
        large = request.ByteSize() > _OFFLOAD_MESSAGE_BYTES
        feeds, wanted = await off_loop_if(large, grpc_v2.decode_infer, request, card)
        prediction = await self._registry.predict(name, feeds, version=version)
        return await off_loop_if(large, grpc_v2.encode_infer, prediction, request.id, wanted, card)

    # -- TensorFlow Serving ----------------------------------------------------------------

    async def predict(self, request: tfs_pb.PredictRequest) -> tfs_pb.PredictResponse:
        name, version = grpc_tfs.requested(request.model_spec)
        card = self._registry.card(name, version)
        large = request.ByteSize() > _OFFLOAD_MESSAGE_BYTES
        feeds, wanted = await off_loop_if(large, grpc_tfs.decode_predict, request, card)
        prediction = await self._registry.predict(name, feeds, version=version)
        return await off_loop_if(large, grpc_tfs.encode_predict, prediction, wanted, card)

    async def tfs_model_metadata(
        self, request: tfs_pb.GetModelMetadataRequest
    ) -> tfs_pb.GetModelMetadataResponse:
        name, version = grpc_tfs.requested(request.model_spec)
        return grpc_tfs.model_metadata(request, self._registry.card(name, version))

    async def model_status(
        self, request: tfs_pb.GetModelStatusRequest
    ) -> tfs_pb.GetModelStatusResponse:
        name, version = grpc_tfs.requested(request.model_spec)
        statuses = self._registry.status(name)
        if version is not None:
            statuses = [status for status in statuses if status.version == version]
            if not statuses:
                raise UnknownModelError(name, version)
        return grpc_tfs.model_status(statuses)


if TYPE_CHECKING:  # the stubs' generics; not subscriptable at run time
    Continuation = Callable[
        [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
    ]
    _AioBehavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


class CallGate(grpc.aio.ServerInterceptor):
    """Refuses, and counts, what gRPC would refuse on its own: unknown methods, and calls over
    ``max_calls`` in progress.

    gRPC runs it for every call once the call's headers arrive: before the request message is
    read and before gRPC's own concurrency limit is applied (``_handle_rpc`` in grpcio's
    ``aio/server.pyx.pxi``). A call is in progress from here until its task ends, however it
    ends (answered, aborted, cancelled by the client), so the count cannot leak. A refusal
    takes the request as a stream and never reads it: a refused call's message is not
    buffered. Runs on the server's event loop only.
    """

    def __init__(self, metrics: GrpcMetrics, max_calls: int) -> None:
        if max_calls < 1:
            raise ValueError(f"max_calls must be at least 1, not {max_calls}")
        self.metrics = metrics
        self.max_calls = max_calls
        self.in_progress = 0

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = handler_call_details.method
        service = _service_of(method)
        handler = await continuation(handler_call_details)
        if handler is None:
            self.metrics.refused(service, "unknown_method", "UNIMPLEMENTED")
            return _refuse_unread(grpc.StatusCode.UNIMPLEMENTED, f"method not found: {method}")
        if self.in_progress >= self.max_calls:
            self.metrics.refused(service, "too_many_calls", "RESOURCE_EXHAUSTED")
            return _refuse_unread(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.in_progress} calls already in progress (the limit); retry later",
            )
        task = asyncio.current_task()
        if task is None or handler.unary_unary is None:  # neither happens on this server
            return handler
        call = _AdmittedCall(self, service)
        self.in_progress += 1
        task.add_done_callback(call.ended)
        return call.wrap(handler)


class _AdmittedCall:
    """A call the gate let through: counted in progress until its task ends; if its handler
    never ran by then, gRPC ended it first (a backstop) or the client gave up before sending
    its request message, which gRPC reports alike (an ended call, no handler run)."""

    def __init__(self, gate: CallGate, service: str) -> None:
        self._gate = gate
        self._service = service
        self._handled = False

    def wrap(self, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
        # Every method of this server is a coroutine (``_Api._method``); the stubs type
        # handlers as the synchronous server's.
        behavior = cast("_AioBehavior", handler.unary_unary)

        async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            self._handled = True
            return await behavior(request, context)

        return grpc.unary_unary_rpc_method_handler(
            handle,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def ended(self, _: asyncio.Task[Any]) -> None:
        self._gate.in_progress -= 1
        if not self._handled:
            self._gate.metrics.ended_unread(self._service)


def _service_of(method: str) -> str:
    """``/package.Service/Method`` -> ``package.Service`` (anything else: the whole path)."""
    parts = method.split("/")
    return parts[1] if len(parts) == 3 and not parts[0] else method


def _refuse_unread(code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler that refuses with ``code`` at once, without reading the request message."""

    async def refuse(
        _: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> NoReturn:
        await context.abort(code, message)
        raise AssertionError("unreachable: abort raises")  # for the type checker

    return grpc.stream_unary_rpc_method_handler(refuse)


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def _refusal(service: str, exc: Exception) -> tuple[grpc.StatusCode, str, str]:
    """The status code, counted reason and message of a call that raised ``exc``."""
    if isinstance(exc, InvalidInputError):
        return grpc.StatusCode.INVALID_ARGUMENT, "bad_input", str(exc)
    if isinstance(exc, UnknownModelError):
        return grpc.StatusCode.NOT_FOUND, "unknown_model", str(exc)
    if isinstance(exc, ServiceBusyError):
        return grpc.StatusCode.UNAVAILABLE, "busy", f"server busy: {exc}; retry later"
    if isinstance(exc, InferenceError):
        return grpc.StatusCode.INTERNAL, "model_error", str(exc)
    # The service keeps serving whatever one call hit.
    log.error("grpc.unexpected_error", service=service, exc_info=exc)
    return grpc.StatusCode.INTERNAL, "internal", f"internal error: {type(exc).__name__}: {exc}"
