"""The MQTT 5 codec (edge_agent.mqtt.codec) on its own: pure functions checked
against paho-mqtt's encoder and decoder (a test dependency) and against bytes
derived by hand from the MQTT 5 specification."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties, VariableByteIntegers

from edge_agent.mqtt import MqttError
from edge_agent.mqtt.codec import (
    ProtocolError,
    decode_varint,
    encode_binary,
    encode_packet,
    encode_props,
    encode_utf8,
    encode_varint,
    parse_props,
    read_props,
    read_remaining_length,
    reason_name,
)

VARINT_MAX = 268_435_455  # MQTT 5 1.5.5: at most four bytes
# MQTT 5 1.5.4: no surrogates, no U+0000 (paho refuses both)
texts = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=40)


@given(st.integers(0, VARINT_MAX), st.binary(max_size=3))
def test_varint_matches_paho_and_decodes_back(n: int, tail: bytes) -> None:
    encoded = encode_varint(n)
    assert encoded == VariableByteIntegers.encode(n)
    assert decode_varint(encoded + tail, 0) == (n, len(encoded))
    assert decode_varint(b"\xff" + encoded, 1) == (n, 1 + len(encoded))


def test_varint_boundaries_from_the_spec() -> None:
    # MQTT 5 1.5.5, table 1-1: the first and last value of each length
    cases = {
        0: b"\x00",
        127: b"\x7f",
        128: b"\x80\x01",
        16_383: b"\xff\x7f",
        16_384: b"\x80\x80\x01",
        2_097_151: b"\xff\xff\x7f",
        2_097_152: b"\x80\x80\x80\x01",
        VARINT_MAX: b"\xff\xff\xff\x7f",
    }
    for n, raw in cases.items():
        assert encode_varint(n) == raw
        assert decode_varint(raw, 0) == (n, len(raw))
    with pytest.raises(ProtocolError, match="variable byte integer"):
        decode_varint(b"\xff\xff\xff\xff\x01", 0)  # a fifth byte is malformed


@given(st.integers(0, VARINT_MAX), st.binary(max_size=3))
def test_remaining_length_reads_the_varint_or_says_it_is_incomplete(n: int, tail: bytes) -> None:
    raw = encode_varint(n)
    assert read_remaining_length(b"\x30" + raw + tail, 1) == (n, 1 + len(raw))
    for cut in range(len(raw)):  # the stream ends inside it: wait for more
        assert read_remaining_length(b"\x30" + raw[:cut], 1)[0] == -1


def test_remaining_length_of_five_bytes_is_malformed() -> None:
    with pytest.raises(ProtocolError, match="remaining length"):
        read_remaining_length(b"\x80\x80\x80\x80\x01", 0)
    with pytest.raises(ProtocolError, match="remaining length"):
        read_remaining_length(b"\xff\xff\xff\xff", 0)  # no need to wait for a fifth


@given(texts)
def test_utf8_string_is_length_prefixed_bytes(s: str) -> None:
    b = s.encode("utf-8")
    assert encode_utf8(s) == len(b).to_bytes(2, "big") + b


def test_utf8_string_counts_bytes_and_refuses_more_than_65535() -> None:
    assert encode_utf8("é") == b"\x00\x02\xc3\xa9"
    assert len(encode_utf8("x" * 65_535)) == 65_537
    with pytest.raises(MqttError, match="65,535"):
        encode_utf8("é" * 32_768)  # 65,536 bytes
    assert encode_binary(b"\x00\x01") == b"\x00\x02\x00\x01"


def test_packets_have_the_fixed_header_of_the_spec() -> None:
    assert encode_packet(0xC0, b"") == b"\xc0\x00"  # PINGREQ (3.12)
    assert encode_packet(0xE0, b"") == b"\xe0\x00"  # DISCONNECT, no reason (3.14.2.1)
    body = bytes(200)
    assert encode_packet(0x30, body) == b"\x30\xc8\x01" + body  # 200 = 0x48 | 0x80, 0x01


@given(
    st.one_of(st.none(), texts.filter(bool)),
    st.lists(st.tuples(texts, texts), max_size=4),
)
def test_publish_properties_match_paho_both_ways(
    content_type: str | None, user: list[tuple[str, str]]
) -> None:
    ours = encode_props(content_type, user)
    theirs = Properties(PacketTypes.PUBLISH)
    if content_type:
        theirs.ContentType = content_type
    if user:
        theirs.UserProperty = list(user)
    assert ours == theirs.pack()
    back = Properties(PacketTypes.PUBLISH)
    back.unpack(ours)
    assert getattr(back, "ContentType", None) == content_type
    assert getattr(back, "UserProperty", []) == user
    props, end = read_props(ours + b"payload", 0)
    assert end == len(ours)
    assert props.get(0x03) == content_type
    assert props.get(0x26, []) == user


def test_connack_properties_packed_by_paho_are_parsed() -> None:
    p = Properties(PacketTypes.CONNACK)
    p.SessionExpiryInterval = 3600
    p.ReceiveMaximum = 20
    p.MaximumQoS = 1
    p.RetainAvailable = 0
    p.MaximumPacketSize = 1 << 20
    p.AssignedClientIdentifier = "auto-1"
    p.TopicAliasMaximum = 10
    p.ReasonString = "ok"
    p.UserProperty = [("a", "1"), ("a", "2")]
    p.WildcardSubscriptionAvailable = 1
    p.SubscriptionIdentifierAvailable = 1
    p.SharedSubscriptionAvailable = 0
    p.ServerKeepAlive = 45
    props, end = read_props(p.pack(), 0)
    assert end == len(p.pack())
    assert props == {
        0x11: 3600,
        0x21: 20,
        0x24: 1,
        0x25: 0,
        0x27: 1 << 20,
        0x12: "auto-1",
        0x22: 10,
        0x1F: "ok",
        0x26: [("a", "1"), ("a", "2")],
        0x28: 1,
        0x29: 1,
        0x2A: 0,
        0x13: 45,
    }


def test_subscription_identifiers_repeat_as_a_list() -> None:
    p = Properties(PacketTypes.PUBLISH)
    p.SubscriptionIdentifier = [1, 300]
    p.CorrelationData = b"\x00\xff"
    props, _ = read_props(p.pack(), 0)
    assert props == {0x0B: [1, 300], 0x09: b"\x00\xff"}


def test_an_empty_property_block_is_one_zero_byte() -> None:
    assert encode_props() == b"\x00"
    assert read_props(b"\x00rest", 0) == ({}, 1)


def test_malformed_property_blocks_are_protocol_errors() -> None:
    with pytest.raises(ProtocolError, match="unknown property 0x7f"):
        parse_props(b"\x7f\x00", 0, 2)
    with pytest.raises(ProtocolError, match="overruns"):
        parse_props(b"\x21\x00", 0, 2)  # Receive Maximum is two bytes, one given
    with pytest.raises(ProtocolError, match="overruns"):
        parse_props(b"\x03\x00\x05ab", 0, 5)  # a string longer than the block


def test_reason_codes_in_words() -> None:
    assert reason_name(0x87) == "not authorized"
    assert reason_name(0x97) == "quota exceeded"
    assert reason_name(0x42) == "reason code 0x42"
