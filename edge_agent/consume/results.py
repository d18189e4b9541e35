"""What every storage backend of the consumer answers with (storage.py, postgres.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from edge_agent.consume.decode import Decoded
from edge_agent.errors import EdgeAgentError

__all__ = ["Storage", "StorageError", "WriteResult"]


class StorageError(EdgeAgentError):
    """A write or the connection failed; nothing of the group was stored."""


class WriteResult:
    __slots__ = ("batches", "duplicates", "readings", "statuses", "windows")

    def __init__(self) -> None:
        self.batches = self.duplicates = self.windows = self.readings = self.statuses = 0


class Storage(Protocol):
    async def open(self) -> None: ...

    async def write(self, items: Sequence[Decoded]) -> WriteResult: ...

    async def close(self) -> None: ...
