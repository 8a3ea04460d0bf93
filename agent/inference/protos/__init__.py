"""The gRPC APIs' message definitions (``*.proto``) and the classes generated from them.

The ``.proto`` files here are this project's own definitions of the Open Inference Protocol
v2 service and of TensorFlow Serving's ``PredictionService`` and ``ModelService`` (names and
field numbers as upstream, see each file's header and docs/inference-api.md). The
``*_pb2.py`` / ``*_pb2.pyi`` beside them are generated at build time by ``generate.py``
(grpcio-tools' protoc; ``make`` and the wheel build run it) and are not in git.

Every generated file is added to ``POOL``, a descriptor pool of its own, instead of
protobuf's default pool: a process that also loads a client library (tritonclient's
``grpc_service.proto``, TensorFlow's protos) registers messages of the same full names there,
and two files defining one name in a pool is an error.
"""

from __future__ import annotations

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
