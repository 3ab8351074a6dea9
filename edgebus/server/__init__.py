"""The trio side of the broker: connections, sessions, fan-out, admission, timers and $SYS."""
