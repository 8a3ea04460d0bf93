"""The serial link to the Arduino peripheral.

``framing`` turns bytes into frames and back (COBS, CRC-16), ``messages_gen`` (generated from
``firmware/protocol/messages.toml`` by ``firmware/protocol/generate.py``) turns payloads into
messages; ``session``, ``relay`` and ``transport`` speak the protocol over a port.
"""
