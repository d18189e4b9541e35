"""Which messages' effects are already durable: a fingerprint per MQTT packet id.

A QoS 1 message is acknowledged only after the checkpoint holding its effect
commits. Killed after that commit but before the PUBACK left, the broker redelivers
it with the same packet id and DUP set (MQTT 5, 4.4): its fingerprint (CRC-32 of
topic and payload, odd so 0 means none) is in the checkpoint, so it is acknowledged
again and counted once. A redelivery whose fingerprint differs (the broker reused
the id) is processed as new.

The table is 65,536 32-bit entries (256 KiB); it is checkpointed in blocks of 256
ids, only the blocks that changed.
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping

__all__ = ["BLOCK", "DeliveryLog"]

BLOCK = 256  # packet ids per checkpointed row


class DeliveryLog:
    """`table[mid]` is the fingerprint of the last message with that packet id;
    `dirty` the blocks changed since the last checkpoint (the hot path writes both)."""

    __slots__ = ("dirty", "table")

    def __init__(self) -> None:
        self.table = array("I", bytes(4 * 65536))
        self.dirty: set[int] = set()

    def restore(self, blocks: Mapping[int, bytes]) -> None:
        table = self.table
        for block, fps in blocks.items():
            if 0 <= block < 65536 // BLOCK and len(fps) == 4 * BLOCK:
                table[block * BLOCK : (block + 1) * BLOCK] = array("I", fps)

    def take_dirty(self, keep: bool) -> dict[int, bytes]:
        """The changed blocks for the checkpoint (none unless `keep`); forgets them."""
        table, dirty, self.dirty = self.table, self.dirty, set()
        if not keep:
            return {}
        return {b: table[b * BLOCK : (b + 1) * BLOCK].tobytes() for b in dirty}
