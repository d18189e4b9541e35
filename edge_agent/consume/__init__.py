"""`edge-agent consume` (SPEC 7): upstream batches and device status into SQLite or PostgreSQL."""

from edge_agent.consume.consumer import ConsumeOptions, Consumer, consume
from edge_agent.consume.decode import BadMessage, Decoded, decode_message
from edge_agent.consume.storage import StorageError, open_storage

__all__ = [
    "BadMessage",
    "ConsumeOptions",
    "Consumer",
    "Decoded",
    "StorageError",
    "consume",
    "decode_message",
    "open_storage",
]
