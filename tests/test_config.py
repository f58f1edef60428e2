"""Configuration: one TOML file plus environment variables; errors name the key and say why."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from charging.config import ConfigError, example_toml, load_settings

REPO = Path(__file__).resolve().parents[1]


def test_the_committed_example_documents_every_key_at_its_default() -> None:
    committed = (REPO / "config" / "charging.example.toml").read_text()
    assert committed == example_toml(), "run: charging config example > config/charging.example.toml"
    settings = load_settings(REPO / "config" / "charging.example.toml", environ={})
    assert settings == load_settings(None, environ={})


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[diameter]\norigin_host = "from.file"\nport = 3870\n')
    settings = load_settings(
        path, environ={"CHARGING_DIAMETER__PORT": "3999", "CHARGING_KAFKA__BOOTSTRAP": "k1:9092,k2:9092"}
    )
    assert settings.diameter.origin_host == "from.file"
    assert settings.diameter.port == 3999
    assert settings.kafka.bootstrap == "k1:9092,k2:9092"


def test_errors_name_each_key_and_why(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[diameter]\nport = 70000\norigin_host = "has space"\n[http]\nunknown_key = 1\n')
    with pytest.raises(ConfigError) as err:
        load_settings(path, environ={})
    text = str(err.value)
    assert "diameter.port" in text and "less than or equal to 65535" in text
    assert "diameter.origin_host" in text and "DiameterIdentity" in text
    assert "http.unknown_key" in text and "Extra inputs are not permitted" in text


def test_a_broken_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[diameter\nport = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(path, environ={})
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_settings(tmp_path / "missing.toml", environ={})


def test_the_command_line_reports_a_bad_configuration_in_one_line_with_status_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[kafka]\npartitions = 0\n")
    result = subprocess.run(
        [sys.executable, "-m", "charging.cli", "-c", str(path), "config", "check"],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 2
    assert "kafka.partitions" in result.stderr and "Traceback" not in result.stderr
