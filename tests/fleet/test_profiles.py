"""Device profiles and fleet files: the shipped ones load; bad ones are refused with file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest
from edgebus_fleet.profiles import load_fleet, load_profile

from edgebus.config import ConfigError
from tests.fleet.conftest import FIRMWARE_SIM, ROOT

PROFILES = sorted((ROOT / "devices").glob("*.toml"))
FLEETS = sorted((FIRMWARE_SIM / "fleets").glob("*.toml"))


def test_every_required_device_kind_is_shipped() -> None:
    profiles = {load_profile(path).name: load_profile(path) for path in PROFILES}
    assert profiles["temp-sensor"].publish[0].qos == 0
    assert profiles["smart-meter"].publish[0].qos == 1 and not profiles["smart-meter"].clean_start
    door = profiles["door-sensor"]
    assert door.will is not None and door.will.payload == "offline"
    assert {s.qos for s in door.publish} == {1, 2} and any(s.retain for s in door.publish)
    valve = profiles["valve"]
    assert valve.sleep is not None and valve.commands is not None and valve.commands.qos == 2
    battery = profiles["battery-node"]
    assert battery.sleep is not None and not battery.clean_start and battery.session_expiry > 0


@pytest.mark.parametrize("path", FLEETS, ids=lambda p: p.name)
def test_shipped_fleets_load(path: Path) -> None:
    assert load_fleet(path).device_count > 0


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


GOOD = """\
[device]
name = "probe"

[[publish]]
name = "t"
topic = "x/{device_id}/t"
interval = 1.0
[publish.fields]
temperature = { type = "float", min = 0, max = 10 }
"""


@pytest.mark.parametrize(
    ("edit", "line", "key", "words"),
    [
        (("interval = 1.0", "interval = 1.0\nintervall = 2"), 8, "publish[0].intervall", "unknown key"),
        (("interval = 1.0", 'interval = "often"'), 7, "publish[0].interval", "must be a number"),
        (('name = "t"', 'name = "t"\nqos = 3'), 6, "publish[0].qos", "from 0 to 2"),
        (("max = 10", "max = -5"), 9, "publish[0].fields.temperature.max", "at least min"),
        (("x/{device_id}/t", "x/{serial}/t"), 6, "publish[0].topic", "unknown template name"),
    ],
)
def test_bad_profile_names_file_line_and_key(
    tmp_path: Path, edit: tuple[str, str], line: int, key: str, words: str
) -> None:
    path = write(tmp_path, "probe.toml", GOOD.replace(*edit))
    with pytest.raises(ConfigError) as caught:
        load_profile(path)
    problem = caught.value.problems[0]
    assert problem.source == str(path)
    assert problem.key == key
    assert problem.line == line
    assert words in problem.message
    assert str(caught.value).startswith(f"{path}:{line}: {key}: ")


def test_impossible_sleep_without_persistent_session(tmp_path: Path) -> None:
    # Commands queued while asleep can only be received with a session that outlives the sleep.
    text = GOOD + '[commands]\ntopic = "c/{device_id}"\nqos = 1\n[sleep]\nawake = 1\nasleep = 5\n'
    with pytest.raises(ConfigError, match="persistent session"):
        load_profile(write(tmp_path, "sleepy.toml", text))


def test_bad_fleet_points_at_its_own_line(tmp_path: Path) -> None:
    profile = write(tmp_path, "probe.toml", GOOD)
    fleet = write(tmp_path, "f.toml", f'[[group]]\nprofile = "{profile.name}"\ncount = 0\n')
    with pytest.raises(ConfigError) as caught:
        load_fleet(fleet)
    assert str(caught.value) == f"{fleet}:3: group[0].count: must be an integer from 1 to 100000, got 0"


def test_fleet_reports_errors_inside_its_profiles(tmp_path: Path) -> None:
    profile = write(tmp_path, "probe.toml", GOOD.replace("interval = 1.0", "interval = 0"))
    fleet = write(tmp_path, "f.toml", f'[[group]]\nprofile = "{profile.name}"\ncount = 2\n')
    with pytest.raises(ConfigError) as caught:
        load_fleet(fleet)
    assert caught.value.source == str(profile) and caught.value.line == 7


@pytest.mark.parametrize(
    ("tail", "expected"),
    [
        (
            '[log]\nkind = "kafka"\naddress = "127.0.0.1:9092"\nstream = "t"\nisolation = "dirty"\n',
            ':8: log.isolation: must be one of "read_committed", "read_uncommitted", got "dirty"',
        ),
        (
            '[log]\nkind = "kafka"\naddress = "127.0.0.1:9092"\nstream = "t"\nuplink_target = "nowhere"\n',
            ":8: log.uplink_target:",
        ),
        (
            '[log]\nkind = "rabbitmq-stream"\naddress = "127.0.0.1:5552"\nstream = "t"\n'
            "[chaos]\nuplink_mute_interval = 5.0\n",
            ":9: chaos.uplink_mute_interval: needs [log] uplink_proxy",
        ),
        (
            '[log]\nkind = "kafka"\naddress = "127.0.0.1:9092"\nstream = "t"\nuplink_proxy = "127.0.0.1:1"\n'
            "[chaos]\nuplink_mute_interval = 2.0\nuplink_mute_duration = 2.0\n",
            ":11: chaos.uplink_mute_duration: must be shorter than uplink_mute_interval (2 s)",
        ),
    ],
)
def test_bad_cloud_log_settings_name_file_line_and_key(tmp_path: Path, tail: str, expected: str) -> None:
    profile = write(tmp_path, "probe.toml", GOOD)
    fleet = write(tmp_path, "f.toml", f'[[group]]\nprofile = "{profile.name}"\ncount = 1\n{tail}')
    with pytest.raises(ConfigError) as caught:
        load_fleet(fleet)
    assert str(caught.value).startswith(f"{fleet}{expected}"), str(caught.value)
