"""edgebus: a lightweight, durable MQTT 3.1.1 / 5.0 broker for IoT gateways."""

__version__ = "0.1.0"
