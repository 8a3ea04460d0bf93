"""Local inference: model cards, runtime backends, the model registry, its REST service and
its gRPC services.

Nothing here is imported by the agent core unless models are configured: numpy and the
runtimes are optional extras (``edge-fleet[inference]``).
"""
