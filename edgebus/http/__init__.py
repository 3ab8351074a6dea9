"""The HTTP listener ([[listener]] type http / https): Prometheus /metrics, the JSON API and the status page.

Served on trio with h11 (sans-IO HTTP/1.1). The package, each module importing only those before it:
``view`` (what the HTTP side reads of the broker), ``server`` (connections: h11, timeouts, size limits),
``auth`` (Basic / bearer credentials and roles), ``metrics`` (the Prometheus text format), ``api`` (the
JSON resources and actions), ``page`` (the status page), ``service`` (routing and the composition).
"""
