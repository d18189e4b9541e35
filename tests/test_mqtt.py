"""The paho adapter: decoding parity of the shared-table Properties, and a live round trip."""

from __future__ import annotations

import asyncio

import paho.mqtt._packet as paho_packet
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.mqtt import MqttClient, _SharedTableProperties
from tests.agent_harness import apoll
from tests.brokers import Broker


def test_shared_table_properties_are_installed() -> None:
    assert paho_packet.Properties is _SharedTableProperties


def _publish_body(topic: bytes, mid: int, props: Properties | None, payload: bytes) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic + mid.to_bytes(2, "big")
    body += props.pack() if props is not None else b"\x00"
    return body + payload


def _as_dict(p: Properties) -> dict[str, object]:
    return {k: v for k, v in vars(p).items() if k not in ("packetType", "types", "names", "properties")}


@settings(max_examples=200)
@given(
    topic=st.text(min_size=1, max_size=20).map(str.encode),
    mid=st.integers(1, 65535),
    payload=st.binary(max_size=50),
    content_type=st.none() | st.text(max_size=20),
    sub_ids=st.lists(st.integers(1, 268435455), max_size=3),
    expiry=st.none() | st.integers(0, 2**32 - 1),
    user=st.lists(st.tuples(st.text(max_size=5), st.text(max_size=5)), max_size=2),
)
def test_decoding_matches_paho(topic: bytes, mid: int, payload: bytes, content_type: str | None,
                               sub_ids: list[int], expiry: int | None,
                               user: list[tuple[str, str]]) -> None:
    props = Properties(PacketTypes.PUBLISH)
    if content_type is not None:
        props.ContentType = content_type
    for sid in sub_ids:
        props.SubscriptionIdentifier = sid
    if expiry is not None:
        props.MessageExpiryInterval = expiry
    for pair in user:
        props.UserProperty = pair
    body = _publish_body(topic, mid, props, payload)

    def decode() -> object:
        try:
            pkt = paho_packet.decode_publish(0x32, body, MQTTProtocolVersion.MQTTv5)
        except Exception as exc:  # paho refuses some (e.g. NUL in UTF-8): both must agree
            return type(exc)
        return (pkt.topic, pkt.mid, pkt.payload, _as_dict(pkt.properties))

    ours = decode()
    paho_packet.Properties = Properties
    try:
        theirs = decode()
    finally:
        paho_packet.Properties = _SharedTableProperties
    assert ours == theirs


def test_empty_property_block_takes_the_short_path() -> None:
    body = _publish_body(b"t", 7, None, b"21.5")
    pkt = paho_packet.decode_publish(0x32, body, MQTTProtocolVersion.MQTTv5)
    assert pkt.payload == b"21.5" and pkt.mid == 7
    assert _as_dict(pkt.properties) == {}
    assert getattr(pkt.properties, "ContentType", None) is None


async def test_round_trip_with_content_type_and_session(broker: Broker) -> None:
    got: list[object] = []
    sub = MqttClient(host="127.0.0.1", port=broker.port, client_id="rt-sub", clean_start=False,
                     session_expiry=60, manual_ack=True, on_message=got.append)
    assert await sub.connect() is False
    await sub.subscribe([("rt/#", 1)])
    pub = MqttClient(host="127.0.0.1", port=broker.port)
    await pub.connect()
    await asyncio.gather(*(pub.publish("rt/a", b"%d" % i, 1, "application/json") for i in range(50)))
    await apoll(lambda: len(got) >= 50, 30, what="50 messages")
    assert [m.payload for m in got] == [b"%d" % i for i in range(50)]  # type: ignore[attr-defined]
    assert {m.properties.ContentType for m in got} == {"application/json"}  # type: ignore[attr-defined]
    # Unacknowledged (manual ack): the session resumes and redelivers them with DUP set.
    sub.close()
    again: list[object] = []
    sub2 = MqttClient(host="127.0.0.1", port=broker.port, client_id="rt-sub", clean_start=False,
                      session_expiry=60, manual_ack=True, on_message=again.append)
    assert await sub2.connect() is True
    await apoll(lambda: len(again) >= 50, 30, what="50 messages")
    assert len(again) == 50 and all(m.dup for m in again)  # type: ignore[attr-defined]
    assert [m.mid for m in again] == [m.mid for m in got]  # type: ignore[attr-defined]
    await sub2.disconnect()
    await pub.disconnect()


@given(st.text(max_size=40), st.text(max_size=40))
def test_packed_publish_properties_match_paho_and_follow_changes(first: str, second: str) -> None:
    from edge_agent.mqtt import _PackedProperties

    ours, theirs = _PackedProperties(PacketTypes.PUBLISH), Properties(PacketTypes.PUBLISH)
    for value in (first, second):
        ours.ContentType = value
        theirs.ContentType = value
        assert ours.pack() == theirs.pack()
        assert ours.pack() == theirs.pack()  # cached the second time


async def test_ack_many_acknowledges_every_message_in_one_write(broker: Broker) -> None:
    got: list[object] = []
    sub = MqttClient(host="127.0.0.1", port=broker.port, client_id="am-sub", clean_start=False,
                     session_expiry=60, receive_maximum=1000, manual_ack=True, on_message=got.append)
    await sub.connect()
    await sub.subscribe([("am/#", 1)])
    pub = MqttClient(host="127.0.0.1", port=broker.port)
    await pub.connect()
    await asyncio.gather(*(pub.publish(f"am/{i}", b"x" * i, 1) for i in range(300)))
    await apoll(lambda: len(got) >= 300, 30, what="300 messages")
    assert len(got) == 300  # read through the buffered receive path, every size intact
    assert sorted(len(m.payload) for m in got) == list(range(300))  # type: ignore[attr-defined]
    sub.ack_many([m.mid for m in got])  # type: ignore[attr-defined]
    await sub.disconnect()
    again: list[object] = []
    sub2 = MqttClient(host="127.0.0.1", port=broker.port, client_id="am-sub", clean_start=False,
                      session_expiry=60, manual_ack=True, on_message=again.append)
    assert await sub2.connect() is True
    await asyncio.sleep(0.3)  # a redelivery would come right after CONNACK
    assert again == []
    await sub2.disconnect()
    await pub.disconnect()


async def test_a_burst_held_in_the_read_buffer_is_delivered_without_more_traffic(broker: Broker) -> None:
    # 3,000 tiny unacknowledged messages fit in one 64 KiB read; a read turn stops
    # after 1,000 packets, and the broker sends nothing more (it waits for acks): the
    # rest must still be delivered although select() never sees the socket readable.
    got: list[object] = []
    sub = MqttClient(host="127.0.0.1", port=broker.port, client_id="burst-sub", receive_maximum=5000,
                     manual_ack=True, on_message=got.append)
    await sub.connect()
    await sub.subscribe([("b", 1)])
    pub = MqttClient(host="127.0.0.1", port=broker.port, max_inflight=5000)
    await pub.connect()
    await asyncio.gather(*(pub.publish("b", b"", 1) for _ in range(3000)))
    await apoll(lambda: len(got) >= 3000, 30, what="3000 messages")
    assert len(got) == 3000
    await sub.disconnect()
    await pub.disconnect()
