"""MQTT: the pure topic schema and payload codecs, and the one module that talks to paho."""
