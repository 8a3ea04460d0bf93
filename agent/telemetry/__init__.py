"""Telemetry sampling: host resources, board-specific readings and the board's hardware id, health."""
