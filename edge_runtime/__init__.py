"""The runtime pieces the agent (``agent/``) and the controller (``fleet/``) both run.

The MQTT link (``mqtt.link`` with its paho client, the only modules that import paho; the
link's pure parts in ``mqtt.base``), the ledger of refused messages (``mqtt.rejections``),
the logging set-up (``log``), glibc's allocator settings (``allocator``), the TOML-backed
settings (``settings``) and their errors (``errors``). The wire's formats are
``edge_contract``'s; nothing here imports either side.
"""
