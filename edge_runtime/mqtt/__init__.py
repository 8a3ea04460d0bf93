"""The MQTT link both sides use, its pure parts, and the ledger of refused messages."""
