"""Who may do what: authentication of a CONNECT, the ACL on publish, subscribe and delivery, topic and
subscription limits, and the read quota. Everything is off (None / False) when not configured, so the
PUBLISH path pays one attribute check."""

from __future__ import annotations

import logging

import trio

from edgebus.auth import (
    Access,
    Acl,
    Authenticator,
    FailureTracker,
    NeedsHash,
    Verdict,
    read_acl_file,
    read_password_file,
)
from edgebus.config import Config
from edgebus.core.connect import refusal
from edgebus.core.limits import RateQuota
from edgebus.core.session import Session
from edgebus.protocol.enums import ConnectReturnCode, ReasonCode
from edgebus.protocol.packets import Connect
from edgebus.server.connection import ClientConnection
from edgebus.transport.stream import peer_identity

log = logging.getLogger("edgebus.server.admission")

#: Password hashes computed at once in worker threads (PBKDF2 takes ~50-100 ms each).
HASHING_THREADS = 2
#: Most remembered read-ACL decisions (client, topic) before the memo is cleared.
READ_ACL_MEMO_ENTRIES = 65536


class Admission:
    """The [security] and [limits] rules, reloadable (SIGHUP) without dropping connections."""

    def __init__(self, config: Config, sessions: dict[str, Session]) -> None:
        self.config = config
        self._sessions = sessions
        self.auth: Authenticator | None = None
        self.acl: Acl | None = None
        self.screening_publish = False
        self.screening_subscribe = False
        self._usernames: dict[str, str | None] = {}  # client id -> user name, for read checks
        self._read_memo: dict[tuple[str, str], bool] = {}
        sec = config.security
        self._auth_failures = FailureTracker(sec.auth_failure_delay, sec.auth_failure_delay_max)
        self._hash_limiter = trio.CapacityLimiter(HASHING_THREADS)
        self.refused_connections = 0
        self.reload_security()

    def reload_security(self, config: Config | None = None) -> None:
        """(Re)read the password and ACL files of [security], and take [security] and [limits] from
        ``config`` (None: the current one): at start and on a reload. Open connections stay; new CONNECTs,
        SUBSCRIBEs and PUBLISHes meet the new rules, and so does every delivery. A file that cannot be
        used raises PasswordFileError / AclError and nothing changes."""
        config = config or self.config
        sec = config.security
        limits = config.limits
        passwords = read_password_file(sec.password_file) if sec.password_file else None
        acl = read_acl_file(sec.acl_file) if sec.acl_file else None
        identities = any(listener.use_identity_as_username for listener in config.listener)
        old = self.config.security
        if (old.auth_failure_delay, old.auth_failure_delay_max) != (
            sec.auth_failure_delay,
            sec.auth_failure_delay_max,
        ):
            self._auth_failures = FailureTracker(sec.auth_failure_delay, sec.auth_failure_delay_max)
        self.config = config
        if sec.allow_anonymous and passwords is None and acl is None and not identities:
            self.auth = None
        else:
            self.auth = Authenticator(sec.allow_anonymous, passwords)
        self.acl = acl
        self._read_memo.clear()
        topic_limits = limits.max_topic_length < 65535 or limits.max_topic_levels > 0
        self.screening_publish = acl is not None or topic_limits or limits.max_message_rate > 0
        self.screening_subscribe = acl is not None or topic_limits or limits.max_subscriptions_per_client > 0

    # --- connections -----------------------------------------------------------------------------

    def over_connection_limit(self, open_connections: int) -> bool:
        cap = self.config.limits.max_connections
        if cap and open_connections >= cap:
            self.refused_connections += 1
            return True
        return False

    def new_quota(self, now: float) -> RateQuota | None:
        limits = self.config.limits
        if not limits.max_message_rate and not limits.max_byte_rate:
            return None
        return RateQuota(limits.max_message_rate, limits.max_byte_rate, now)

    async def throttle(self, client: ClientConnection, received: int) -> None:
        """Pause this connection's reader as long as its byte and message quota says."""
        quota = client.quota
        if quota is not None and not client.closing:
            now = trio.current_time()
            pause = quota.pause(now, received)
            if pause > 0:
                # Throttle by not reading: TCP pushes back on the client. A paused reader is not a
                # silent client, so keep-alive counts from the end of the pause.
                client.last_read = now + pause
                await trio.sleep(pause)

    # --- CONNECT ---------------------------------------------------------------------------------

    def admit(self, client: ClientConnection, connect: Connect) -> bool:
        """Authenticate a CONNECT. True when decided at once (anonymous, certificate identity, a
        remembered password): the caller goes on with the CONNECT. Otherwise the reader finishes it
        (`finish`): a password hash to compute in a thread, or a refusal to delay."""
        auth = self.auth
        assert auth is not None
        identity = peer_identity(client.stream)
        outcome = auth.check(connect.username, connect.password, identity)
        username = identity if identity is not None else connect.username
        if outcome is Verdict.ACCEPT and self._will_allowed(connect, username):
            self._admitted(client, username)
            return True
        client.pending_connect = (connect, outcome, username)
        return False

    def _will_allowed(self, connect: Connect, username: str | None) -> bool:
        # The Will Message is published for this client later: it needs write access now (Mosquitto).
        will = connect.will
        acl = self.acl
        if will is None or acl is None:
            return True
        return acl.allows(username, connect.client_id, will.topic, Access.WRITE)

    def _admitted(self, client: ClientConnection, username: str | None) -> None:
        client.admitted = True
        client.username = username

    def remember_user(self, client: ClientConnection) -> None:
        """After a CONNECT is accepted: the user behind its client id, for the read checks."""
        conn = client.conn
        if conn.session is None or self.acl is None:
            return
        usernames = self._usernames
        if usernames.get(conn.client_id, "") != client.username:
            self._read_memo.clear()  # a new user behind this client id
        usernames[conn.client_id] = client.username
        if len(usernames) > 2 * len(self._sessions) + 1024:
            # Forget the clients whose sessions are gone (amortised: no hook in session removal).
            self._usernames = {cid: name for cid, name in usernames.items() if cid in self._sessions}

    async def finish(self, client: ClientConnection) -> Connect | None:
        """Finish a pending CONNECT: the Connect to go on with when accepted; None when refused (the
        refusing CONNACK is queued, the caller closes) or when the connection closed meanwhile."""
        assert client.pending_connect is not None
        connect, outcome, username = client.pending_connect
        client.pending_connect = None
        auth = self.auth
        assert auth is not None
        if isinstance(outcome, NeedsHash):
            matched = await trio.to_thread.run_sync(auth.verify, outcome, limiter=self._hash_limiter)
            if matched:
                auth.remember(outcome)
            outcome = Verdict.ACCEPT if matched else Verdict.BAD_CREDENTIALS
        if client.closing:
            return None
        host = client.stream.remote.rpartition(":")[0]
        if outcome is Verdict.ACCEPT:
            if self._will_allowed(connect, username):
                self._auth_failures.succeeded(host)
                self._admitted(client, username)
                return connect
            outcome = Verdict.NOT_AUTHORIZED
        delay = self._auth_failures.failed(host, trio.current_time())
        log.info(
            "%s: CONNECT of %r (user %r) refused: %s; answering in %.1f s",
            client.stream.remote,
            connect.client_id,
            username,
            "bad user name or password" if outcome is Verdict.BAD_CREDENTIALS else "not authorized",
            delay,
        )
        if delay > 0:
            # Slows a password guesser down without blocking anything but this connection.
            await trio.sleep(delay)
        if client.closing:
            return None
        reason = (
            ReasonCode.BAD_USER_NAME_OR_PASSWORD  # 0x86
            if outcome is Verdict.BAD_CREDENTIALS
            else ReasonCode.NOT_AUTHORIZED  # 0x87
        )
        # 3.1.1: 0x05, as Mosquitto answers; the CONNACK is the last packet [MQTT-3.2.2-7]
        client.conn.reject(refusal(connect.protocol_level, reason, ConnectReturnCode.NOT_AUTHORIZED))
        return None

    # --- PUBLISH, SUBSCRIBE, delivery --------------------------------------------------------------

    def may_read(self, client_id: str, topic: str) -> bool:
        """READ access of a session's client to a topic, memoised. A session whose user is not known
        (restored from the store and not reconnected since) receives nothing until it reconnects."""
        key = (client_id, topic)
        allowed = self._read_memo.get(key)
        if allowed is None:
            acl = self.acl
            usernames = self._usernames
            if acl is None or client_id not in usernames:
                allowed = acl is None
            else:
                allowed = acl.allows(usernames[client_id], client_id, topic, Access.READ)
            if len(self._read_memo) >= READ_ACL_MEMO_ENTRIES:
                self._read_memo.clear()
            self._read_memo[key] = allowed
        return allowed

    def screen_publish(self, client: ClientConnection, topic: str) -> int:
        """The inbound checks of a PUBLISH: message quota, topic limits, WRITE access. 0 if it may be
        routed, else the reason code for a v5 PUBACK/PUBREC (a 3.1.1 publisher gets a plain ack and
        the message is dropped, as Mosquitto does)."""
        quota = client.quota
        if quota is not None:
            quota.messages += 1
        if not self._topic_within_limits(topic):
            return ReasonCode.TOPIC_NAME_INVALID
        acl = self.acl
        if acl is not None and not acl.allows(client.username, client.conn.client_id, topic, Access.WRITE):
            log.debug("client %s (user %r): PUBLISH %r denied", client.conn.client_id, client.username, topic)
            return ReasonCode.NOT_AUTHORIZED
        return 0

    def _topic_within_limits(self, topic: str) -> bool:
        limits = self.config.limits
        max_length = limits.max_topic_length
        # Characters first: UTF-8 takes at least one byte each and at most four.
        if len(topic) > max_length or (len(topic) * 4 > max_length and len(topic.encode()) > max_length):
            return False
        return not limits.max_topic_levels or topic.count("/") < limits.max_topic_levels

    def screen_subscription(
        self, client: ClientConnection, session: Session, full_filter: str, topic_filter: str
    ) -> int:
        """0 if the subscription may be made, else the v5 SUBACK reason code."""
        if not self._topic_within_limits(topic_filter):
            return ReasonCode.TOPIC_FILTER_INVALID
        cap = self.config.limits.max_subscriptions_per_client
        if cap and full_filter not in session.subscriptions and len(session.subscriptions) >= cap:
            return ReasonCode.QUOTA_EXCEEDED
        acl = self.acl
        if acl is not None and not acl.allows_subscribe(client.username, client.conn.client_id, topic_filter):
            log.debug("client %s: SUBSCRIBE %r denied", client.conn.client_id, full_filter)
            return ReasonCode.NOT_AUTHORIZED
        return 0
