"""The asyncio side of the Redis Streams sink: one redis-py connection, each method run on the sink's asyncio
loop thread (`edgebus.bridge.aio`): opening it, reading the stream's last entry, adding a batch in one script.

A batch is one ``EVALSHA`` of `ADD_BATCH_SCRIPT`: one round trip, and a partial failure leaves a *prefix* of
the batch in the stream (a script stops at its first error; what it wrote before stays, later entries are
never written). That is what makes "an id not above the stream's top is already there" true.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from edgebus.bridge.aio import describe
from edgebus.bridge.sink import SinkError
from edgebus.config import BridgeConfig

__all__ = ["ADD_BATCH_SCRIPT", "CLOSE_TIMEOUT_S", "REFUSED_PREFIX", "LastEntry", "RedisLink", "describe"]

# The sink's logger: one name to configure for the Redis bridge.
log = logging.getLogger("edgebus.bridge.redis_stream")

#: Seconds closing a connection may take (it waits for nothing the runner needs).
CLOSE_TIMEOUT_S = 2.0
#: How the script's error reply starts when it stopped at an entry the server refused (not a duplicate).
REFUSED_PREFIX = "EDGEBUS-REFUSED"

#: KEYS[1]: the stream. ARGV: per entry its id, its number of field/value strings, then those strings.
#: XADD refuses an id not above the stream's top: when the top has the same millisecond part (the same store
#: epoch's base, see edgebus.bridge.redis_stream), that entry was written before: a duplicate, skipped. Any
#: other refusal stops the script, so the stream holds a prefix of the batch. Returns {added, duplicates}.
ADD_BATCH_SCRIPT = """
local key = KEYS[1]
local added, duplicates = 0, 0
local i = 1
while i <= #ARGV do
  local id = ARGV[i]
  local count = tonumber(ARGV[i + 1])
  local reply = redis.pcall('XADD', key, id, unpack(ARGV, i + 2, i + 1 + count))
  if type(reply) == 'table' and reply.err then
    local duplicate = false
    if string.find(reply.err, 'equal or smaller', 1, true) then
      local top = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
      if top[1] and string.match(top[1][1], '^%d+') == string.match(id, '^%d+') then
        duplicate = true
      end
    end
    if not duplicate then
      return redis.error_reply('""" + REFUSED_PREFIX + """ ' .. id .. ' ' .. reply.err)
    end
    duplicates = duplicates + 1
  else
    added = added + 1
  end
  i = i + 2 + count
end
return {added, duplicates}
"""




@dataclass(frozen=True, slots=True)
class LastEntry:
    """The stream's last entry: its id and its ``edgebus-msg-id`` field (None: not one of ours, or none)."""

    entry_id: str
    message_id: str | None


class RedisLink:
    """One redis-py connection. Every method runs on the asyncio loop thread."""

    def __init__(self, bridge: BridgeConfig, client_id: str, host: str, port: int) -> None:
        self._bridge = bridge
        self.where = f"{host}:{port}"
        tls = bridge.tls
        self.client = redis.asyncio.Redis(
            host=host,
            port=port,
            username=bridge.username or None,
            password=bridge.password or None,
            ssl=tls,
            ssl_ca_certs=(bridge.cafile or None) if tls else None,
            ssl_certfile=(bridge.certfile or None) if tls else None,
            ssl_keyfile=(bridge.keyfile or None) if tls else None,
            socket_connect_timeout=bridge.connect_timeout,
            socket_timeout=bridge.ack_timeout,
            retry=Retry(NoBackoff(), 0),  # the runner owns reconnects (and their backoff)
            single_connection_client=True,
            client_name=client_id,
        )
        self._add_batch = self.client.register_script(ADD_BATCH_SCRIPT)

    async def open(self, stream: str) -> None:
        """Connect, authenticate, check that ``stream`` is a stream or not there yet, load the script."""
        try:
            async with asyncio.timeout(self._bridge.connect_timeout):
                await self.client.ping()
                kind = await self.client.type(stream)
                kind = kind.decode() if isinstance(kind, bytes) else str(kind)
                if kind not in ("none", "stream"):
                    raise SinkError(f"Redis key {stream!r} holds a {kind}, not a stream")
                await self.client.script_load(ADD_BATCH_SCRIPT)
        except TimeoutError:  # (no address in these texts: connect_first puts it in front)
            raise SinkError(f"no answer within {self._bridge.connect_timeout:g} s") from None
        except redis.exceptions.AuthenticationError as error:
            raise SinkError(f"authentication failed: {error}") from None
        except redis.exceptions.RedisError as error:
            raise SinkError(describe(error)) from None

    async def close(self) -> None:
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self.client.aclose()
        except (TimeoutError, OSError, redis.exceptions.RedisError) as error:
            log.debug("closing the Redis link to %s: %s", self.where, describe(error))

    async def last_entry(self, stream: str) -> LastEntry | None:
        """The stream's last entry (XREVRANGE + - COUNT 1); None when the stream is empty or absent."""
        try:
            async with asyncio.timeout(self._bridge.ack_timeout):
                found: Any = await self.client.xrevrange(stream, "+", "-", count=1)  # loosely typed
        except TimeoutError:
            raise SinkError(f"reading the last entry of {stream!r}: no answer within "
                            f"{self._bridge.ack_timeout:g} s") from None
        except redis.exceptions.RedisError as error:
            raise SinkError(f"reading the last entry of {stream!r}: {describe(error)}") from None
        if not found:
            return None
        entry_id, fields = found[0]
        raw_id = fields.get(b"edgebus-msg-id")
        message_id = raw_id.decode("utf-8", "replace") if isinstance(raw_id, bytes) else None
        return LastEntry(entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id), message_id)

    async def add_batch(self, stream: str, arguments: Sequence[bytes | str | int], ack_timeout: float) -> int:
        """Run the batch script (one round trip); returns how many entries were already there."""
        try:
            async with asyncio.timeout(ack_timeout):
                reply = await self._add_batch(keys=[stream], args=list(arguments))
        except TimeoutError:
            raise SinkError(f"no reply from {self.where} within {ack_timeout:g} s") from None
        except redis.exceptions.ResponseError as error:
            text = str(error)
            if text.startswith(REFUSED_PREFIX):
                entry_id = text.split()[1]
                seq = int(entry_id.partition("-")[2] or 0)
                raise SinkError(f"{self.where} refused entry {text[len(REFUSED_PREFIX) + 1:]}", seq) from None
            raise SinkError(f"{self.where}: {describe(error)}") from None
        except redis.exceptions.RedisError as error:
            raise SinkError(f"adding to {stream!r} at {self.where} failed: {describe(error)}") from None
        return int(reply[1])
