"""Fleet controller: the service that tracks every device, and the ``fleet`` command line."""

__version__ = "0.1.0"
