"""realtime-relay: an auditing relay for the OpenAI Realtime API."""

__version__ = "0.1.0"
