"""The payload decoder's limits and the reasons it counts rejected readings under (SPEC 2)."""

from __future__ import annotations

from typing import Final

__all__ = [
    "DECODER_ERROR_PREFIX",
    "MAX_PAYLOAD",
    "MIN_EVENT_TIME",
    "REASON_BAD_CBOR",
    "REASON_BAD_FIELD",
    "REASON_BAD_JSON",
    "REASON_BAD_PAYLOAD",
    "REASON_BAD_READING",
    "REASON_BAD_TS",
    "REASON_NON_FINITE",
    "REASON_NOT_A_NUMBER",
    "REASON_NO_READING",
    "REASON_TOO_LARGE",
    "REASON_TS_IN_FUTURE",
    "REASON_TS_TOO_OLD",
]

MAX_PAYLOAD: Final = 65536
MIN_EVENT_TIME: Final = 946684800.0  # 2000-01-01T00:00:00Z

REASON_TOO_LARGE: Final = "too_large"  # payload over MAX_PAYLOAD bytes (counts once)
REASON_BAD_JSON: Final = "bad_json"  # format "json": not JSON
REASON_BAD_CBOR: Final = "bad_cbor"  # format "cbor" or CBOR content type: not one CBOR item
REASON_BAD_PAYLOAD: Final = "bad_payload"  # format "auto": neither JSON nor CBOR
REASON_NOT_A_NUMBER: Final = "not_a_number"  # bare payload / `value` not a number
REASON_NON_FINITE: Final = "non_finite"  # NaN or +-Infinity (or an int beyond float range)
REASON_BAD_FIELD: Final = "bad_field"  # object without `value`: bool/null/array/map/... field
REASON_BAD_TS: Final = "bad_ts"  # `ts` neither a finite number nor an RFC 3339 string with offset
REASON_TS_TOO_OLD: Final = "ts_too_old"  # before 2000-01-01T00:00:00Z
REASON_TS_IN_FUTURE: Final = "ts_in_future"  # more than max_future_skew ahead of arrival
REASON_NO_READING: Final = "no_reading"  # the message yields no reading at all
REASON_BAD_READING: Final = "bad_reading"  # custom decoder yielded something that is not a reading
DECODER_ERROR_PREFIX: Final = "decoder_error:"  # + the custom decoder's exception class name
