"""Telemetry sampling: host resources, board-specific readings, the hardware id, health."""
