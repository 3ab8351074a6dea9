"""edgebus-fleet: simulates a fleet of MQTT devices against any broker and audits every message."""

__version__ = "0.1.0"
