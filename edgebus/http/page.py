"""The status page: one self-contained HTML file (inline CSS and JS, no CDN: gateways are often offline)
that logs in and polls the JSON API."""

from __future__ import annotations

from importlib.resources import files
from typing import Final

STATUS_PAGE: Final = files("edgebus.http").joinpath("status.html").read_bytes()
