"""The ingest session's connection: the persistent MQTT session on the local broker.

Clean start off with a session expiry, so the broker keeps our subscriptions and
queues QoS 1 readings while the agent is away; manual acknowledgements (the ack
policy is the ingest session's: after the checkpoint); our Receive Maximum. It
subscribes this config's filters (with Subscription Identifiers where they overlap),
unsubscribes filters a resumed session kept from an older config, and reconnects
with backoff. The health report reads its state.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable

from edge_agent.backoff import Backoff
from edge_agent.buffer.store import Store
from edge_agent.config import Config
from edge_agent.ingest.broker_drops import BrokerDrops
from edge_agent.ingest.router import TopicRouter
from edge_agent.mqtt import Message, MqttClient, MqttError, TlsSettings
from edge_agent.sdnotify import SdNotifier

__all__ = ["RECEIVE_MAXIMUM", "LocalConnection"]

log = logging.getLogger("edge_agent")

# The local session's Receive Maximum: how many QoS 1 messages the broker sends us
# unacknowledged. Acknowledgements wait for the checkpoint, so this is also what a
# crash can make the broker redeliver. 8192 holds ~0.3 s at 30k readings/s; the
# throughput is the same as with 65535 and the worst case memory far smaller.
RECEIVE_MAXIMUM = 8192
# After a small read the local socket is left unread for this long (MqttClient
# read_nap): readings trickling in at live rates arrive in one read per 5 ms instead
# of one every couple of messages. The same order as the inbox's own wait
# (ingest_session.COALESCE_S); far below any window, checkpoint or batch delay.
READ_NAP_S = 0.005


class LocalConnection:
    """Connects, subscribes and reconnects; `client` is the live connection or None."""

    def __init__(
        self,
        *,
        config: Callable[[], Config],
        router: Callable[[], TopicRouter],
        store: Store,
        notifier: SdNotifier,
        on_message: Callable[[Message], None],
    ) -> None:
        self._config = config  # the running config and router: a reload replaces them
        self._router = router
        self._store = store
        self._notifier = notifier
        self._on_message = on_message
        self.client: MqttClient | None = None
        self.connected = False
        self.ever_connected = False
        self.lost_since: float | None = None
        self.subscribed = False
        self.filters_before: list[str] = []  # filters the broker's session holds (from meta)
        self.password = ""  # from local.password_file, read at start and on reload
        self._ready_notified = False
        # Called when the connection is made or lost: the device status (SPEC 4)
        # publishes a health change at once rather than at its next check.
        self.on_change: Callable[[], None] = _nothing

    async def run(self) -> None:
        """Connect and stay connected (until cancelled); each loss is logged and retried."""
        backoff = Backoff()
        agent = self._config()
        cfg = agent.local
        client_id = cfg.client_id or f"edge-agent-{agent.agent.id}"
        self.lost_since = time.monotonic()
        last_error = ""
        while True:
            client = MqttClient(
                host=cfg.host,
                port=cfg.port,
                client_id=client_id,
                clean_start=False,
                session_expiry=cfg.session_expiry,
                receive_maximum=RECEIVE_MAXIMUM,
                manual_ack=True,
                on_message=self._on_message,
                tls=TlsSettings(cfg.ca_file, cfg.cert_file, cfg.key_file) if cfg.tls else None,
                username=cfg.username,
                password=self.password,
                read_nap=READ_NAP_S,
            )
            try:
                present = await client.connect(timeout=10.0)
                self.client = client
                filters = await self.subscribe(client)
            except (MqttError, OSError) as exc:
                client.close()
                self.client = None
                if str(exc) != last_error:  # once per distinct cause, not per retry
                    log.warning("local broker %s:%d unreachable: %s", cfg.host, cfg.port, exc)
                    last_error = str(exc)
                await asyncio.sleep(backoff.next())
                continue
            backoff.reset()
            last_error = ""
            self.connected = self.ever_connected = True
            self.lost_since = None
            self.subscribed = True
            log.info(
                "subscribed on %s:%d to %s (session %s)",
                cfg.host,
                cfg.port,
                ", ".join(filters),
                "resumed" if present else "new",
            )
            if not self._ready_notified:
                self._ready_notified = True
                self._notifier.ready()
                self._notifier.status(f"subscribed to {len(filters)} filter(s)")
            self.on_change()
            why = await client.wait_disconnected()
            self.connected = self.subscribed = False
            self.lost_since = time.monotonic()
            self.on_change()
            self.client = None
            client.close()
            log.warning("local broker connection lost: %s", why)
            await asyncio.sleep(backoff.next())

    async def subscribe(self, client: MqttClient) -> list[str]:
        """Subscribe this config's filters; drop ones a resumed session kept from an older config."""
        router = self._router()
        filters = router.subscriptions
        await client.subscribe(
            [(f, self._config().local.qos) for f in filters],
            ids=[router.sub_ids[f] for f in filters] if router.needs_ids else None,
        )
        stale = [f for f in self.filters_before if f not in router.sub_ids]
        if stale:
            await client.unsubscribe(stale)
            log.info("unsubscribed filters no longer configured: %s", ", ".join(stale))
        try:
            # Not part of the session's configured filters (never unsubscribed as stale).
            await client.subscribe([(BrokerDrops.topic, 0)])
        except MqttError as exc:  # a broker without $SYS, or an ACL that hides it
            log.info(
                "local broker does not report its dropped messages (%s): %s", BrokerDrops.topic, exc
            )
        if set(self.filters_before) != set(filters):
            self.filters_before = list(filters)
            await self._store.set_meta([("filters", json.dumps(filters))])
        return filters

    async def drop(self) -> None:
        """Disconnect (the run task is cancelled first): new settings, or the stop."""
        client, self.client = self.client, None
        self.connected = self.subscribed = False
        self.lost_since = time.monotonic()
        if client is not None:
            await client.disconnect()


def _nothing() -> None:
    pass
