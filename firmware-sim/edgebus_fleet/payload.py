"""Message payloads: readings drawn from a profile's schema, plus the audit keys, encoded as CBOR or JSON.

Every payload is a map carrying ``dev`` (device id), ``seq`` (per device and stream, from 0), ``ts``
(send time, seconds since the epoch) and ``run`` (the run's id, so messages of an earlier run, still
retained or queued in a broker, are told apart), then the schema's fields.
"""

from __future__ import annotations

import json
import random
from typing import Any

import cbor2

from edgebus_fleet.profiles import FieldSpec, StreamSpec

__all__ = ["ReadingGenerator", "decode_payload", "encode_payload"]


class ReadingGenerator:
    """Draws readings for one device's stream; counters keep their running value."""

    __slots__ = ("_counters", "_random", "stream")

    def __init__(self, stream: StreamSpec, rng: random.Random) -> None:
        self.stream = stream
        self._random = rng
        self._counters = {f.name: f.min for f in stream.fields if f.type == "counter"}

    def reading(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        rng = self._random
        for spec in self.stream.fields:
            values[spec.name] = self._value(spec, rng)
        return values

    def _value(self, spec: FieldSpec, rng: random.Random) -> Any:
        kind = spec.type
        if kind == "float":
            return round(rng.uniform(spec.min, spec.max), spec.decimals)
        if kind == "int":
            return rng.randint(int(spec.min), int(spec.max))
        if kind == "bool":
            return rng.random() < 0.5
        if kind == "choice":
            return rng.choice(spec.values)
        value = self._counters[spec.name] + rng.uniform(spec.step_min, spec.step_max)
        self._counters[spec.name] = value
        return round(value, spec.decimals)


def encode_payload(encoding: str, values: dict[str, Any]) -> bytes:
    if encoding == "json":
        return json.dumps(values, separators=(",", ":")).encode()
    return cbor2.dumps(values)


def decode_payload(payload: bytes) -> dict[str, Any] | None:
    """The map in a CBOR or JSON payload, None when it is neither (a will, a foreign message)."""
    if payload[:1] == b"{":
        try:
            value = json.loads(payload)
        except ValueError:
            return None
    else:
        try:
            value = cbor2.loads(payload)
        except Exception:  # cbor2 raises several types on garbage; none of them matters here
            return None
    return value if isinstance(value, dict) else None
