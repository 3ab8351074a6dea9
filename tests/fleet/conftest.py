"""Fleet-simulator fixtures: the importable package lives in firmware-sim/, and brokers of each kind."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIRMWARE_SIM = ROOT / "firmware-sim"
if str(FIRMWARE_SIM) not in sys.path:  # an editable/regular install finds it anyway
    sys.path.insert(0, str(FIRMWARE_SIM))

from tests.client.conftest import any_broker  # noqa: E402

__all__ = ["FIRMWARE_SIM", "ROOT", "any_broker"]
