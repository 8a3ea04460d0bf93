"""The running daemon: the composition root (``app``) and its systemd handshake (``sdnotify``).

``agent.cli`` starts ``daemon.app.Agent``; nothing else in the agent imports this room.
"""
