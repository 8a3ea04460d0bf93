"""Edge agent: the daemon that runs on each Raspberry Pi or Jetson board of the fleet."""

__version__ = "0.1.0"
