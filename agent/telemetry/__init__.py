"""Telemetry sampling: host resources, board-specific readings, health."""
