"""`penstock engine calibrate`: fast deployments' kernels measured on purpose and kept for every start."""

import json
from pathlib import Path

from tests.cli.conftest import penstock, penstock_env


def test_calibrate_stores_a_fast_deployments_choice_and_skips_invariant_ones(tmp_path: Path) -> None:
    config = tmp_path / "penstock.yaml"
    # weights fp32: nothing but the attention choice to time, so the test stays short
    config.write_text("deployments:\n  - name: steady\n  - name: quick\n    determinism: fast\n    weights: fp32\n")
    result = penstock("engine", "calibrate", "--config", str(config), env=penstock_env(tmp_path), timeout=300)
    assert result.returncode == 0, result.stderr
    assert "steady: batch_invariant: fixed kernels, nothing to measure" in result.stdout
    stored = list((tmp_path / "kernels").glob("*.json"))
    assert len(stored) == 1 and str(stored[0]) in result.stdout
    assert set(json.loads(stored[0].read_text())) == {"attention"}
    doctor = penstock("doctor", "--config", str(config), env=penstock_env(tmp_path))
    assert "stored in" in " ".join(doctor.stdout.split())
