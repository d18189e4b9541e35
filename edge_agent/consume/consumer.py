"""The reference upstream consumer (SPEC 7): broker -> decode -> one transaction -> PUBACK.

Messages are acknowledged by hand (paho `manual_ack`): whatever arrived while the
previous group was being written becomes the next group, is decoded, stored in
one transaction, and only once that committed are its PUBACKs sent. A consumer
killed at any point has acknowledged only what is on disk; the broker redelivers
the rest to its session (or the group), and the storage's dedupe on
`(schema, agent, seq)` and rev-guarded upserts make the second copy a no-op.

The session is persistent (clean start off, a session expiry), under a client id
that survives a restart: messages for a consumer that is down wait at the broker
instead of being lost. Several consumers on one host get distinct ids by claiming
numbered slots with a file lock (the kernel frees a slot when its holder dies,
however it dies), so a restarted consumer takes back the session it left.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from edge_agent.backoff import Backoff
from edge_agent.consume.decode import BadMessage, Decoded, decode_message
from edge_agent.consume.storage import Storage, StorageError
from edge_agent.mqtt import MAX_PACKET, Message, MqttClient, MqttError, TlsSettings

__all__ = ["ConsumeOptions", "Consumer", "claim_client_id"]

log = logging.getLogger("edge_agent.consume")

DEFAULT_TOPIC = "edge/+/batches"


@dataclass(frozen=True, slots=True)
class ConsumeOptions:
    host: str
    port: int
    db: str
    topics: tuple[str, ...] = (DEFAULT_TOPIC,)
    share: str = ""
    username: str = ""
    password: str = ""
    tls: TlsSettings | None = None
    client_id: str = ""  # "" = claim one (claim_client_id)
    session_expiry: float = 7 * 86400.0
    # Unacknowledged messages the broker may have in flight to us (MQTT 5 Receive
    # Maximum): the most one group can hold. Larger groups mean fewer commits.
    receive_maximum: int = 1000
    # Records (window records and readings) one transaction takes at most: a backlog
    # is written in groups of about this size, the next one decoded while the
    # previous is written, instead of decoding everything before the first write.
    group_records: int = 10_000
    keepalive: int = 30

    @property
    def filters(self) -> list[str]:
        return [f"$share/{self.share}/{t}" if self.share else t for t in self.topics]


def claim_client_id(opts: ConsumeOptions, lock_dir: Path | None = None) -> tuple[str, IO[bytes]]:
    """A stable client id for these options on this host, and the open lock file that holds it.

    The id is `edge-consume-<10 hex>-<slot>`: the hex from host name, broker,
    filters and database; the slot the lowest one no live process holds.
    """
    ident = "\n".join([socket.gethostname(), f"{opts.host}:{opts.port}", *opts.filters, opts.db])
    base = "edge-consume-" + hashlib.sha256(ident.encode()).hexdigest()[:10]
    d = lock_dir or Path(tempfile.gettempdir()) / "edge-agent-consume"
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    for slot in range(1024):
        f = open(d / f"{base}-{slot}.lock", "ab")  # noqa: SIM115 (held for the process's life)
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        return f"{base}-{slot}", f
    raise OSError(f"no free consumer slot in {d}")


class Consumer:
    """Runs until `stop` is set: subscribe, store each group, acknowledge it."""

    def __init__(self, opts: ConsumeOptions, storage: Storage, client_id: str) -> None:
        self.opts = opts
        self.storage = storage
        self.client_id = client_id
        # Decoded as they arrive, so decoding overlaps the previous group's write.
        self.pending: list[tuple[Message, Decoded | BadMessage]] = []
        self._wake = asyncio.Event()
        self.subscribed = asyncio.Event()  # set while the subscription is in place
        # counters (logged once a minute and at exit)
        self.batches = self.duplicates = self.windows = self.readings = self.statuses = 0
        self.rejected = 0
        self.groups = 0

    def _on_message(self, msg: Message) -> None:
        item: Decoded | BadMessage
        if msg.too_large:  # the MQTT layer skipped its payload (bounded memory per connection)
            item = BadMessage(
                f"larger than {MAX_PACKET} bytes, the most this consumer reads"
                " (keep upstream.max_batch_bytes below it)"
            )
        else:
            try:
                item = decode_message(bytes(msg.payload), _encoding(msg))
            except BadMessage as exc:
                item = exc
        self.pending.append((msg, item))
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        backoff = Backoff(cap=10.0)
        last_error = ""
        reporter = asyncio.create_task(self._report(stop))
        try:
            while not stop.is_set():
                client = MqttClient(
                    host=self.opts.host,
                    port=self.opts.port,
                    client_id=self.client_id,
                    clean_start=False,
                    session_expiry=self.opts.session_expiry,
                    receive_maximum=self.opts.receive_maximum,
                    manual_ack=True,
                    tls=self.opts.tls,
                    username=self.opts.username,
                    password=self.opts.password,
                    keepalive=self.opts.keepalive,
                    on_message=self._on_message,
                )
                self.pending = []  # what the last connection delivered unacked comes again
                if not last_error:  # once per outage, not once per retry
                    log.info(
                        "connecting to %s:%d as %s", self.opts.host, self.opts.port, self.client_id
                    )
                try:
                    await client.connect(timeout=10.0)
                    await client.subscribe([(f, 1) for f in self.opts.filters])
                except MqttError as exc:
                    client.close()
                    if str(exc) != last_error:
                        log.warning("broker %s:%d: %s", self.opts.host, self.opts.port, exc)
                        last_error = str(exc)
                    await _wait(stop, backoff.next())
                    continue
                last_error = ""
                backoff.reset()
                self.subscribed.set()
                log.info(
                    "subscribed to %s on %s:%d as %s",
                    ", ".join(self.opts.filters),
                    self.opts.host,
                    self.opts.port,
                    self.client_id,
                )
                try:
                    await self._serve(client, stop)
                finally:
                    self.subscribed.clear()
                    if stop.is_set():
                        await client.disconnect()
                    else:
                        client.close()
                if not stop.is_set():
                    log.warning(
                        "lost the broker %s:%d; reconnecting", self.opts.host, self.opts.port
                    )
                    await _wait(stop, backoff.next())
        finally:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
            self._log_totals()

    async def _serve(self, client: MqttClient, stop: asyncio.Event) -> None:
        lost = asyncio.ensure_future(client.wait_disconnected())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while True:
                if not self.pending:
                    self._wake.clear()
                    woken = asyncio.ensure_future(self._wake.wait())
                    await asyncio.wait({woken, lost, stopping}, return_when=asyncio.FIRST_COMPLETED)
                    woken.cancel()
                if lost.done():
                    return
                if stop.is_set():
                    # Take nothing new; what is here already gets stored and acked.
                    client.pause_reading()
                if self.pending:
                    group = self._take()
                    await self._store(group, stop)
                    if lost.done():
                        return  # acks now would go to a new connection's packet ids
                    client.ack_many([m.mid for m, _ in group if m.qos > 0])
                if stop.is_set() and not self.pending:
                    return
        finally:
            for f in (lost, stopping):
                f.cancel()

    def _take(self) -> list[tuple[Message, Decoded | BadMessage]]:
        """The next group: the oldest pending messages, up to `group_records` records."""
        pending, cap, n = self.pending, self.opts.group_records, 0
        for i, (_, item) in enumerate(pending):
            n += item.records if isinstance(item, Decoded) else 1
            if n >= cap:
                group = pending[: i + 1]
                del pending[: i + 1]
                return group
        self.pending = []
        return pending

    async def _store(
        self, group: list[tuple[Message, Decoded | BadMessage]], stop: asyncio.Event
    ) -> None:
        items: list[Decoded] = []
        for m, item in group:
            if isinstance(item, BadMessage):
                self.rejected += 1
                log.warning("rejected a message on %s: %s", m.topic, item)
            else:
                items.append(item)
        if not items:
            return
        backoff = Backoff(cap=10.0)
        while True:
            try:
                res = await self.storage.write(items)
                break
            except StorageError as exc:
                log.warning("database write failed (retrying, nothing acknowledged): %s", exc)
                if stop.is_set():
                    raise  # unacknowledged: the broker keeps them for the next start
                await _wait(stop, backoff.next())
        self.groups += 1
        self.batches += res.batches
        self.duplicates += res.duplicates
        self.windows += res.windows
        self.readings += res.readings
        self.statuses += res.statuses

    async def _report(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await _wait(stop, 60.0)
            if not stop.is_set():  # the last totals are logged once, when run() ends
                self._log_totals()

    def _log_totals(self) -> None:
        log.info(
            "stored %d batches (%d duplicates skipped), %d window records, %d readings, "
            "%d statuses; %d messages rejected",
            self.batches,
            self.duplicates,
            self.windows,
            self.readings,
            self.statuses,
            self.rejected,
        )


def _encoding(m: Message) -> str | None:
    for k, v in m.user_properties:
        if k.lower() == "content-encoding":
            return str(v)
    return None


async def _wait(stop: asyncio.Event, delay: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(delay):
            await stop.wait()


async def consume(opts: ConsumeOptions, storage: Storage | None = None) -> None:
    """Open the database, claim a client id, and run until SIGTERM/SIGINT."""
    import signal

    from edge_agent.consume.storage import open_storage

    store = storage or open_storage(opts.db)
    await store.open()
    lock: IO[bytes] | None = None
    client_id = opts.client_id
    if not client_id:
        client_id, lock = claim_client_id(opts)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            os._exit(130)  # a second signal: leave now (nothing unacked is lost)
        log.info("stopping: storing what arrived, then disconnecting")
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    try:
        await Consumer(opts, store, client_id).run(stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await store.close()
        if lock is not None:
            lock.close()
