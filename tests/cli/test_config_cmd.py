from pathlib import Path

import yaml

from tests.cli.conftest import penstock, penstock_env


def test_config_show_prints_the_effective_config_with_secrets_masked(tmp_path: Path) -> None:
    config = tmp_path / "penstock.yaml"
    config.write_text(
        "tenants:\n  - id: acme\n    name: ACME\n    limits: {rpm: 60}\npolicy:\n  default_max_tokens: 64\n"
    )
    env = penstock_env(
        tmp_path,
        PENSTOCK_ADMIN_KEY="sk-do-not-print-0123456789",
        DATABASE_URL="postgresql://app:pg-secret@db.example/penstock",
        PENSTOCK_PORT="9100",
    )
    result = penstock("config", "show", "--config", str(config), env=env)
    assert result.returncode == 0, result.stderr
    assert "sk-do-not-print" not in result.stdout and "pg-secret" not in result.stdout
    shown = yaml.safe_load(result.stdout)
    assert shown["port"] == 9100
    [tenant] = shown["tenants"]
    assert (tenant["id"], tenant["name"], tenant["limits"]["rpm"]) == ("acme", "ACME", 60)
    assert shown["policy"]["default_max_tokens"] == 64
    assert shown["database_url"] == "postgresql://app:***@db.example/penstock"


def test_config_show_with_an_invalid_value_exits_2(tmp_path: Path) -> None:
    result = penstock("config", "show", env=penstock_env(tmp_path, PENSTOCK_PORT="not-a-port"))
    assert result.returncode == 2
    assert "port" in result.stderr
