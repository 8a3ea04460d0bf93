"""What the controller sees of the agent and asks of it.

Presence (the retained status), events (state changes, queued on the uplink), commands (MQTT
v5 request/response) and the ledger of refused inbound messages that every receiver shares.
"""
