import json
from pathlib import Path

import pytest

from penstock.config import DEFAULT_MODEL_NAME, load_settings
from penstock.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PENSTOCK_HOME", "PENSTOCK_PORT", "PENSTOCK_ADMIN_KEY", "DATABASE_URL", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "penstock.yaml"
    path.write_text(text)
    return path


def test_defaults_serve_the_bundled_model_on_loopback() -> None:
    settings = load_settings()
    assert settings.host == "127.0.0.1"
    assert settings.port == 8000
    assert [d.name for d in settings.deployments] == [DEFAULT_MODEL_NAME]
    assert settings.database_url is None


def test_environment_overrides_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write(tmp_path, "port: 9001\ntenants:\n  - id: acme\n    name: ACME\n")
    monkeypatch.setenv("PENSTOCK_PORT", "9002")
    settings = load_settings(config)
    assert settings.port == 9002
    assert settings.tenants[0].id == "acme"


def test_database_url_read_from_the_conventional_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:s3cret@db.internal:5432/penstock")
    assert load_settings().database_url == "postgresql://app:s3cret@db.internal:5432/penstock"


def test_invalid_value_names_the_field(tmp_path: Path) -> None:
    config = write(tmp_path, "deployments:\n  - name: small\n    dtype: float8\n")
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    assert "deployments.0.dtype" in info.value.message
    assert str(config) in info.value.message


def test_unknown_key_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="prot"):
        load_settings(write(tmp_path, "prot: 8000\n"))


def test_duplicate_deployments_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unique"):
        load_settings(write(tmp_path, "deployments:\n  - name: a\n  - name: a\n"))


def test_malformed_yaml_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(write(tmp_path, "port: [8000\n"))


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "absent.yaml")


def test_masked_hides_every_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PENSTOCK_ADMIN_KEY", "sk-very-secret-0123456789")
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:dbpass@db/penstock")
    monkeypatch.setenv("REDIS_URL", "redis://:redispass@cache:6379/0")
    remote = {"name": "vllm", "backend": "openai", "upstream": {"urls": ["https://user:upass@gpu-1:8000/v1"]}}
    monkeypatch.setenv("PENSTOCK_DEPLOYMENTS", json.dumps([remote]))
    shown = str(load_settings().masked())
    for secret in ("sk-very-secret-0123456789", "dbpass", "redispass", "upass"):
        assert secret not in shown
    assert "postgresql://app:***@db/penstock" in shown and "https://user:***@gpu-1:8000/v1" in shown


@pytest.mark.parametrize("key", ["", "short-key", "x" * 15])
def test_an_empty_or_short_master_key_is_refused(monkeypatch: pytest.MonkeyPatch, key: str) -> None:
    """Audit finding 5: an empty key read as none, an open server that could then bind any interface."""
    monkeypatch.setenv("PENSTOCK_ADMIN_KEY", key)
    with pytest.raises(ConfigError, match="at least 16 characters"):
        load_settings()
    monkeypatch.setenv("PENSTOCK_ADMIN_KEY", "x" * 16)
    assert load_settings().admin_key is not None
