"""gateway: a multi-protocol alert gateway for edge hardware, built on Django Channels."""

__version__ = "0.1.0"
