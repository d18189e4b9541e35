"""The bridge: source -> frames -> per-board seq/clock -> publisher, and its figures."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import cbor2

from edge_agent.health.server import HealthServer
from firmware_bridge.boards import BoardState, SeqResult, learn_offset, track_seq
from firmware_bridge.config import BridgeConfig
from firmware_bridge.frames import DROP_REASONS, FrameDecoder, Splitter
from firmware_bridge.publish import CBOR, JSON, Publisher
from firmware_bridge.transports import FdSource, UdpSource, make_source

__all__ = ["Bridge", "FramePath"]

log = logging.getLogger("firmware_bridge")

_encode_json = json.JSONEncoder(separators=(",", ":")).encode
_BAD_ID = frozenset("/+#\x00")
_STAR = 0x2A
_BRACE = 0x7B


class FramePath:
    """The hot path, free of I/O: bytes in, (topic, payload, props) out via submit.

    One instance per source. All figures it keeps are plain ints and dicts so the
    health endpoint can read them without locks (everything runs on one loop).
    """

    def __init__(
        self,
        cfg: BridgeConfig,
        submit: Callable[[str, bytes, Any], None],
        wall: Callable[[], float] = time.time,
    ) -> None:
        f = cfg.frames
        self.binary = f.format == "cobs_cbor"
        self.decoder = FrameDecoder(f.format, f.checksum, f.max_line)
        self.splitter = Splitter(b"\x00" if self.binary else b"\n", f.max_line)
        self.frames_in = 0
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        self.boards: dict[str, BoardState] = {}
        self._submit = submit
        self._wall = wall
        self._template = cfg.publish.topic_template
        self._seq_field = f.seq_field
        self._modulus = f.seq_modulus
        self._max_boards = f.max_boards
        self._default_id = f.default_id
        self._mode = cfg.clock.mode
        self._clock_field = cfg.clock.field
        self._tolerance = cfg.clock.tolerance
        self._fresh = False  # the next frame is the first since the device was opened

    # ---- entry points ------------------------------------------------------------

    def opened(self) -> None:
        """The device was (re)opened: forget a torn tail; the next line may be torn too."""
        self.splitter.reset()
        self._fresh = True

    def stream(self, chunk: bytes, default_id: str) -> None:
        """Bytes from a stream (serial, pty, stdin)."""
        before = self.splitter.too_long
        frames = self.splitter.feed(chunk)
        if self.splitter.too_long != before:
            self.frames_in += 1
            self.dropped["too_long"] += 1
            self._fresh = False
        if frames:
            self._frames(frames, default_id)

    def datagram(self, data: bytes, sender: str) -> None:
        """A datagram: complete frames, the last one with or without its delimiter."""
        frames = data.split(self.splitter.delimiter)
        if not frames[-1]:
            frames.pop()
        self._frames(frames, sender)

    def _frames(self, frames: list[bytes], default_id: str) -> None:
        arrival = self._wall()  # one clock read per chunk: frames in it arrived together
        decode = self.decoder.binary if self.binary else self.decoder.text
        dropped = self.dropped
        for raw in frames:
            obj = decode(raw)
            if obj is None:
                continue
            self.frames_in += 1
            if self._fresh:
                self._fresh = False
                if type(obj) is str or not self._whole(raw):
                    dropped["partial"] += 1
                    continue
            if isinstance(obj, str):
                dropped[obj] += 1
                continue
            try:
                reason = self._publish(obj, default_id, arrival)
            except (ValueError, TypeError, OverflowError, RecursionError, cbor2.CBOREncodeError):
                # a field that cannot be carried on: an id over 4300 digits, an uptime
                # too large for a float, a CBOR value with no encoding (naive datetime)
                reason = "malformed"
            if reason is not None:
                dropped[reason] += 1

    def _whole(self, raw: bytes) -> bool:
        """Can this first frame after an open not be the torn end of a longer one?

        A CRC or checksum makes a torn frame fail; so does JSON's opening brace. A bare
        key=value line could be the tail of a longer one ("mp=21.5" of "temp=21.5").
        """
        if self.binary or raw[:1] == b"{":
            return True
        raw = raw.rstrip(b"\r")
        return len(raw) >= 3 and raw[-3] == _STAR

    # ---- one decoded frame ---------------------------------------------------------

    def _publish(self, obj: dict[str, Any], default_id: str, arrival: float) -> str | None:
        """Stamp and queue one frame; return a drop reason instead when it cannot be."""
        ident = obj.get("id")
        if ident is None:
            ident = self._default_id or default_id
            obj["id"] = ident
        elif type(ident) is not str:
            if type(ident) is not int:
                return "malformed"
            ident = obj["id"] = str(ident)
        board = self.boards.get(ident)
        if board is None:
            if not ident or len(ident) > 64 or not _BAD_ID.isdisjoint(ident):
                return "malformed"  # would escape its topic level or be a wildcard
            if len(self.boards) >= self._max_boards:
                return "too_many_boards"
            board = self.boards[ident] = BoardState(ident, self._template.format(id=ident))
        seq = obj.pop(self._seq_field, None)
        if seq is not None:
            if type(seq) is not int or seq < 0:
                return "malformed"
            if track_seq(board, seq, self._modulus) == SeqResult.DUPLICATE:
                return "duplicate"
        mode = self._mode
        if mode == "arrival":
            obj["ts"] = arrival
        elif mode == "board":
            f = self._clock_field
            t = obj.get(f) if f == "ts" else obj.pop(f, None)
            obj["ts"] = arrival if t is None else t
        else:
            up = obj.pop(self._clock_field, None)
            if type(up) not in (int, float) or not 0 <= up < math.inf:
                return "malformed"
            obj["ts"] = learn_offset(board, up / 1000.0, arrival, self._tolerance)
        board.frames += 1
        if self.binary:
            self._submit(board.topic, cbor2.dumps(obj), CBOR)
        else:
            self._submit(board.topic, _encode_json(obj).encode(), JSON)
        return None


class Bridge:
    """Runs one source into the local broker until stopped.

    `async with Bridge(cfg) as b:` starts it; `b.health()` gives its figures.
    """

    def __init__(self, cfg: BridgeConfig, *, wall: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.publisher = Publisher(cfg.publish)
        self.path = FramePath(cfg, self.publisher.submit, wall)
        on_data = self.path.datagram if cfg.source.kind == "udp" else self.path.stream
        self.source: FdSource | UdpSource = make_source(cfg.source, on_data, self.path.opened)
        self.started = time.monotonic()
        self._tasks: list[asyncio.Task[Any]] = []
        self._health_server: HealthServer | None = None
        self.done = asyncio.Event()  # set when the source ends (stdin EOF) or fails
        self.error: OSError | None = None

    async def start(self) -> None:
        await self.publisher.start()
        self._tasks.append(asyncio.create_task(self._run_source(), name="source"))
        if self.cfg.health.address is not None:
            host, port = self.cfg.health.address
            self._health_server = HealthServer(
                host, port, health=self.health, ready=self.ready, metrics=None
            )
            await self._health_server.start()

    async def _run_source(self) -> None:
        try:
            await self.source.run()
        except OSError as e:
            log.error("source %s failed: %s", self.source.path, e)
            self.error = e
            raise
        finally:
            self.done.set()

    async def close(self, timeout: float = 2.0) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await t
        if self._health_server is not None:
            await self._health_server.close()
        await self.publisher.close(timeout)

    async def __aenter__(self) -> Bridge:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def ready(self) -> bool:
        """/readyz: the source is open and the broker connected."""
        return bool(self.source.is_open and self.publisher.connected.is_set())

    def health(self) -> dict[str, Any]:
        """The bridge's own small figures (also served over HTTP and printed on SIGUSR1)."""
        p, s, pub = self.path, self.source, self.publisher
        return {
            "uptime_s": round(time.monotonic() - self.started, 3),
            "source": {
                "kind": s.kind,
                "path": s.path,
                "open": s.is_open,
                "opens": s.opens,
                "bytes_in": s.bytes_in,
            },
            "broker": {"connected": pub.connected.is_set(), "connects": pub.connects},
            "frames_in": p.frames_in,
            "dropped": dict(p.dropped, queue_full=pub.dropped, refused=pub.refused),
            "published": pub.published,
            "queued": pub.queued + pub.outstanding,
            "boards": {
                b.id: {
                    "frames": b.frames,
                    "lost": b.lost,
                    "resets": b.resets,
                    "clock_relearns": b.relearns,
                }
                for b in p.boards.values()
            },
        }
