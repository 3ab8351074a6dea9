"""Per-client rate quotas: token buckets that say how long a connection's reader should pause."""

from __future__ import annotations

__all__ = ["RateQuota"]


class RateQuota:
    """Message-rate and byte-rate budgets of one connection ([limits] max_message_rate, max_byte_rate).

    Each is a token bucket holding up to one second's worth: a client may burst that much, and beyond it
    the reader pauses until the bucket is back at zero. Pausing reads (instead of disconnecting) lets TCP
    push back on the client: its sends block, and nothing it sent is lost.
    """

    __slots__ = ("_byte_tokens", "_last", "_message_tokens", "byte_rate", "message_rate", "messages")

    def __init__(self, message_rate: float, byte_rate: float, now: float) -> None:
        self.message_rate = message_rate
        self.byte_rate = byte_rate
        self._message_tokens = message_rate
        self._byte_tokens = byte_rate
        self._last = now
        self.messages = 0  # PUBLISH packets counted since the last `pause`

    def pause(self, now: float, received_bytes: int) -> float:
        """Charge what was read since the last call; returns the seconds to wait before reading on."""
        elapsed = max(0.0, now - self._last)
        self._last = now
        wait = 0.0
        if self.message_rate:
            tokens = (
                min(self.message_rate, self._message_tokens + elapsed * self.message_rate) - self.messages
            )
            self._message_tokens = tokens
            if tokens < 0:
                wait = -tokens / self.message_rate
        if self.byte_rate:
            tokens = min(self.byte_rate, self._byte_tokens + elapsed * self.byte_rate) - received_bytes
            self._byte_tokens = tokens
            if tokens < 0:
                wait = max(wait, -tokens / self.byte_rate)
        self.messages = 0
        return wait
