"""trio_streams: a Durable Streams protocol server on Trio."""

__version__ = "0.1.0"
