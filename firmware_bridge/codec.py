"""Wire-level helpers: NMEA-style XOR checksum, CRC-16/CCITT-FALSE and COBS.

All of these run once per frame, so they lean on C code (int.from_bytes, binascii)
rather than Python loops over bytes.
"""

from __future__ import annotations

import binascii

__all__ = ["cobs_decode", "cobs_encode", "crc16", "xor8"]


def xor8(data: bytes | bytearray | memoryview) -> int:
    """XOR of all bytes (the NMEA `*HH` checksum), by folding one big int in halves.

    log2(len) big-int operations instead of one Python step per byte.
    """
    n = len(data)
    if n == 0:
        return 0
    x = int.from_bytes(data, "little")
    while n > 1:
        half = (n + 1) >> 1  # the low part keeps the odd byte, if any
        x = (x & ((1 << (half << 3)) - 1)) ^ (x >> (half << 3))
        n = half
    return x


def crc16(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, not reflected, xorout 0 (check 0x29B1).

    binascii.crc_hqx is exactly this polynomial, unreflected, with the init we pass.
    """
    return binascii.crc_hqx(data, 0xFFFF)


def cobs_encode(data: bytes) -> bytes:
    """Consistent Overhead Byte Stuffing: the result holds no 0x00 (delimiter not added)."""
    out = bytearray()
    for chunk in data.split(b"\x00"):
        # each zero-free run is written in blocks of at most 254 bytes
        while len(chunk) >= 254:
            out.append(0xFF)
            out += chunk[:254]
            chunk = chunk[254:]
        out.append(len(chunk) + 1)
        out += chunk
    return bytes(out)


def cobs_decode(data: bytes | bytearray) -> bytes | None:
    """Inverse of cobs_encode; None when the block codes do not add up (a torn frame)."""
    out = bytearray()
    i = 0
    n = len(data)
    while i < n:
        code = data[i]
        if code == 0:
            return None
        end = i + code
        if end > n:
            return None
        out += data[i + 1 : end]
        i = end
        if code != 0xFF and i < n:
            out.append(0)
    return bytes(out)
