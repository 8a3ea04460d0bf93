"""Signed over-the-air model updates: TUF-verified releases fetched over MQTT, A/B slots,
health-gated commit and automatic rollback."""
