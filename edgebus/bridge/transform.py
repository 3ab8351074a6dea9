"""Payload transforms of out rules (CBOR payloads re-encoded as JSON); the optional packages bridges need."""

from __future__ import annotations

import base64
import datetime
import json
import math
from typing import Any

JSON_CONTENT_TYPE = "application/json"


def _jsonable(value: Any) -> Any:
    """CBOR's data model mapped onto JSON's: byte strings as base64 text, tags as their content,
    times as ISO 8601, NaN and infinities as null, map keys as text."""
    if isinstance(value, dict):
        return {k if isinstance(k, str) else json.dumps(_jsonable(k)): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(item) for item in value]
    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    tag_value = getattr(value, "value", None)
    if tag_value is not None and hasattr(value, "tag"):  # cbor2.CBORTag of an unknown tag
        return _jsonable(tag_value)
    return str(value)  # Decimal, Fraction, UUID, IP addresses, regexes, undefined ...


def cbor_to_json(payload: bytes) -> bytes | None:
    """The CBOR document in ``payload`` as compact JSON (UTF-8), or None when it is not one CBOR item
    (the message is then forwarded unchanged)."""
    import cbor2  # the "bridge" extra; imported here so the broker runs without it

    try:
        value = cbor2.loads(payload)
    except Exception:  # cbor2 raises several types for malformed input (CBORDecodeError, ValueError ...)
        return None
    return json.dumps(_jsonable(value), separators=(",", ":"), ensure_ascii=False).encode()


def require_cbor() -> None:
    """Fail at start, not on the first message, when the transform is configured without cbor2."""
    try:
        import cbor2  # noqa: F401
    except ImportError:
        raise RuntimeError('the cbor-json transform needs cbor2: pip install "edgebus[bridge]"') from None


def require_nats() -> None:
    """A nats-jetstream bridge needs nats-py: say so at start."""
    try:
        import nats  # noqa: F401
    except ImportError:
        raise RuntimeError('a nats-jetstream bridge needs nats-py: pip install "edgebus[bridge]"') from None


def require_redis() -> None:
    """A redis-stream bridge needs redis-py: say so at start."""
    try:
        import redis  # noqa: F401
    except ImportError:
        raise RuntimeError('a redis-stream bridge needs redis-py: pip install "edgebus[redis]"') from None


def require_rstream() -> None:
    """A rabbitmq-stream bridge needs rstream: say so at start."""
    try:
        import rstream  # noqa: F401
    except ImportError:
        raise RuntimeError(
            'a rabbitmq-stream bridge needs rstream: pip install "edgebus[rabbitmq]"'
        ) from None


def require_kafka() -> None:
    """A kafka bridge needs confluent-kafka: say so at start."""
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        raise RuntimeError('a kafka bridge needs confluent-kafka: pip install "edgebus[kafka]"') from None
