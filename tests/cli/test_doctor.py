from pathlib import Path

from tests.cli.conftest import penstock, penstock_env


def test_doctor_passes_on_an_installed_machine(tmp_path: Path, redis_url: str) -> None:
    result = penstock("doctor", env=penstock_env(tmp_path, REDIS_URL=redis_url))
    assert result.returncode == 0, result.stdout
    for check in ("python", "chat model", "embedding model", "database", "redis"):
        assert check in result.stdout
    assert "missing" not in result.stdout


def test_doctor_names_the_fix_for_a_missing_model(tmp_path: Path) -> None:
    config = tmp_path / "penstock.yaml"
    config.write_text(f"deployments:\n  - name: gone\n    model_path: {tmp_path / 'absent.gguf'}\n")
    result = penstock("doctor", "--config", str(config), env=penstock_env(tmp_path))
    assert result.returncode == 1
    assert "absent.gguf" in result.stdout


def test_doctor_reports_an_unreachable_database_and_redis(tmp_path: Path) -> None:
    env = penstock_env(
        tmp_path, DATABASE_URL="postgresql://nobody:pw@127.0.0.1:9/penstock", REDIS_URL="redis://127.0.0.1:9/0"
    )
    result = penstock("doctor", env=env)
    assert result.returncode == 1
    assert result.stdout.count("missing") == 2
    assert "DATABASE_URL" in result.stdout and "REDIS_URL" in result.stdout
    assert "pw@" not in result.stdout


def test_doctor_checks_a_reachable_external_database(tmp_path: Path, postgres_server: str) -> None:
    result = penstock("doctor", env=penstock_env(tmp_path, DATABASE_URL=postgres_server))
    assert result.returncode == 0, result.stdout
    assert "pgvector available" in result.stdout


def test_doctor_shows_where_each_deployments_kernels_come_from(tmp_path: Path) -> None:
    config = tmp_path / "penstock.yaml"
    config.write_text("deployments:\n  - name: steady\n  - name: quick\n    determinism: fast\n")
    result = penstock("doctor", "--config", str(config), env=penstock_env(tmp_path))
    text = " ".join(result.stdout.split())  # the table wraps long details
    assert "steady: batch_invariant, fixed kernels" in text
    assert "quick: fast, kernels not measured yet" in text
