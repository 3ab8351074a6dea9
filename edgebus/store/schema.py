"""The store's SQL schema: the tables, their version, and the migrations from every older version."""

from __future__ import annotations

#: The schema this edgebus writes; a database at a newer version is refused (treated as damaged).
SCHEMA_VERSION = 5

_SCHEMA_V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE sessions (
    client_id TEXT PRIMARY KEY,
    protocol_level INTEGER NOT NULL,
    expiry_interval INTEGER NOT NULL,
    disconnected_at REAL             -- wall-clock time the client went away, NULL while connected
);
CREATE TABLE subscriptions (
    client_id TEXT NOT NULL,
    topic_filter TEXT NOT NULL,
    qos INTEGER NOT NULL,
    no_local INTEGER NOT NULL,
    retain_as_published INTEGER NOT NULL,
    retain_handling INTEGER NOT NULL,
    subscription_id INTEGER,
    PRIMARY KEY (client_id, topic_filter)
) WITHOUT ROWID;
CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    properties BLOB,                 -- MQTT 5 property block as on the wire, NULL if none
    expires_at REAL,                 -- wall clock, NULL for never
    publisher TEXT
);
CREATE TABLE deliveries (
    seq INTEGER PRIMARY KEY,         -- global order: restores each session's queue order
    client_id TEXT NOT NULL,
    message_id INTEGER NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    subscription_ids TEXT NOT NULL,  -- comma-separated
    packet_id INTEGER,               -- NULL while queued
    state INTEGER NOT NULL           -- 0 queued, 1 await PUBACK, 2 await PUBREC, 3 await PUBCOMP
);
CREATE TABLE inbound_qos2 (
    client_id TEXT NOT NULL,
    packet_id INTEGER NOT NULL,
    PRIMARY KEY (client_id, packet_id)
) WITHOUT ROWID;
CREATE TABLE retained (
    topic TEXT PRIMARY KEY,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    properties BLOB,
    expires_at REAL
);
CREATE TABLE wills (
    client_id TEXT PRIMARY KEY,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    properties BLOB,
    protocol_level INTEGER NOT NULL,
    fire_at REAL NOT NULL            -- wall clock
);
"""

# Version 2: the bridges' outboxes (issue 6). `epoch` names this store in forwarded message ids: a new
# store (or a wiped data directory) starts a new epoch, so its sequence numbers never pass for old ones.
_SCHEMA_V2 = """
CREATE TABLE bridge_outbox (
    bridge TEXT NOT NULL,
    seq INTEGER NOT NULL,            -- per bridge, strictly increasing, never reused
    topic TEXT NOT NULL,             -- the remote topic or subject
    payload BLOB NOT NULL,           -- as forwarded (after any transform)
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    content_type TEXT,
    queued_at REAL NOT NULL,         -- wall clock
    PRIMARY KEY (bridge, seq)
) WITHOUT ROWID;
CREATE TABLE bridge_cursor (
    bridge TEXT PRIMARY KEY,
    forwarded_seq INTEGER NOT NULL   -- everything up to here is in the upstream log
);
INSERT OR IGNORE INTO meta VALUES ('epoch', lower(hex(randomblob(4))))
"""

# Version 3: a bridged message's expiry (wall clock, NULL for never) [MQTT-3.3.2-5].
_SCHEMA_V3 = "ALTER TABLE bridge_outbox ADD COLUMN expires_at REAL"

# Version 4: a delivery names its session by the session row's rowid, not by its client id (issue 12):
# a queued delivery row shrinks from ~36 to ~16 bytes, and each of its bytes reaches the disk about four
# times. A session row keeps its rowid for life (it is saved with an upsert, never replaced); a
# delivery whose session row is gone (NULL here) is not restored, as before.
_SCHEMA_V4 = """
CREATE TABLE deliveries_v4 (
    seq INTEGER PRIMARY KEY,
    session INTEGER,                 -- sessions.rowid
    message_id INTEGER NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    subscription_ids TEXT NOT NULL,
    packet_id INTEGER,
    state INTEGER NOT NULL
);
INSERT INTO deliveries_v4
    SELECT d.seq, s.rowid, d.message_id, d.qos, d.retain, d.subscription_ids, d.packet_id, d.state
    FROM deliveries d LEFT JOIN sessions s ON s.client_id = d.client_id;
DROP TABLE deliveries;
ALTER TABLE deliveries_v4 RENAME TO deliveries
"""

# Version 5: a bridged message's MQTT 5 User Properties (issue 13), in order, repeats kept [MQTT-3.3.2-18]:
# their property block as on the wire (each pair 0x26, name, value; the form the messages table keeps its
# properties in, read back by the same codec), NULL when there are none. Rows of older versions have none.
_SCHEMA_V5 = "ALTER TABLE bridge_outbox ADD COLUMN user_properties BLOB"

#: Schema migrations: MIGRATIONS[n] takes a database from version n to n + 1.
MIGRATIONS: dict[int, str] = {0: _SCHEMA_V1, 1: _SCHEMA_V2, 2: _SCHEMA_V3, 3: _SCHEMA_V4, 4: _SCHEMA_V5}
