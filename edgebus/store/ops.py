"""The store's operations: tuples whose first item names them, and the SQL each one runs."""

from __future__ import annotations

from typing import Any

#: Operations, as tuples whose first item names them (see `_APPLY` for the SQL of each).
Op = tuple[Any, ...]

_APPLY: dict[str, str] = {
    "session": "INSERT OR REPLACE INTO sessions VALUES (?, ?, ?, ?)",
    "session_away": "UPDATE sessions SET disconnected_at = ? WHERE client_id = ?",
    "sub": "INSERT OR REPLACE INTO subscriptions VALUES (?, ?, ?, ?, ?, ?, ?)",
    "unsub": "DELETE FROM subscriptions WHERE client_id = ? AND topic_filter = ?",
    "msg": "INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    "msg_gone": "DELETE FROM messages WHERE id = ?",
    "dlv": "INSERT INTO deliveries VALUES (?, ?, ?, ?, ?, ?, NULL, 0)",
    "dlv_state": "UPDATE deliveries SET packet_id = ?, state = ? WHERE seq = ?",
    "dlv_gone": "DELETE FROM deliveries WHERE seq = ?",
    "in2": "INSERT OR REPLACE INTO inbound_qos2 VALUES (?, ?)",
    "in2_gone": "DELETE FROM inbound_qos2 WHERE client_id = ? AND packet_id = ?",
    "retain": "INSERT OR REPLACE INTO retained VALUES (?, ?, ?, ?, ?)",
    "unretain": "DELETE FROM retained WHERE topic = ?",
    "will": "INSERT OR REPLACE INTO wills VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    "will_gone": "DELETE FROM wills WHERE client_id = ?",
    "bridge_in": "INSERT INTO bridge_outbox VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "bridge_drop": "DELETE FROM bridge_outbox WHERE bridge = ? AND seq = ?",
}
# ("bridge_done", bridge, seq): everything up to seq is in the upstream log.
_BRIDGE_DONE = (
    "DELETE FROM bridge_outbox WHERE bridge = ? AND seq <= ?",
    "INSERT OR REPLACE INTO bridge_cursor VALUES (?, ?)",
)
_SESSION_GONE = (
    "DELETE FROM subscriptions WHERE client_id = ?",
    "DELETE FROM deliveries WHERE client_id = ?",
    "DELETE FROM inbound_qos2 WHERE client_id = ?",
    "DELETE FROM sessions WHERE client_id = ?",
)


def _cancel_out(batch: list[Op]) -> list[Op]:
    """Drop the deliveries (and messages) created and finished within one batch: a message its
    subscriber acknowledged before the commit never touches the disk."""
    born_dlv = {op[1] for op in batch if op[0] == "dlv"}
    if not born_dlv:
        return batch
    dead_dlv = {op[1] for op in batch if op[0] == "dlv_gone"} & born_dlv
    if not dead_dlv:
        return batch
    born_msg = {op[1] for op in batch if op[0] == "msg"}
    dead_msg = {op[1] for op in batch if op[0] == "msg_gone"} & born_msg
    kept: list[Op] = []
    for op in batch:
        kind = op[0]
        if kind in ("dlv", "dlv_gone") and op[1] in dead_dlv:
            continue
        if kind == "dlv_state" and op[3] in dead_dlv:
            continue
        if kind in ("msg", "msg_gone") and op[1] in dead_msg:
            continue
        kept.append(op)
    return kept
