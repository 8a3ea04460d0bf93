"""The uplink: the on-disk queue (outbox), its worker thread and the forwarder to the broker.

Every telemetry message and event is appended to the outbox first and deleted only after the
broker's PUBACK; the forwarder drains it oldest first. Nothing here knows what a message means.
"""
