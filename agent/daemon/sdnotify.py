"""The agent's systemd notification: ``edge_runtime.sdnotify``, shared with the controller."""

from edge_runtime.sdnotify import SystemdNotifier

__all__ = ["SystemdNotifier"]
