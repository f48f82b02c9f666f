"""The prepared accelerator check runs end to end on CPU (``--cpu-smoke``), as on a lent GPU."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_device_check_cpu_smoke_reports_every_variant_and_imports_only_the_jax_core(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path)}
    env.pop("PYTHONPATH", None)
    cmd = ["bash", "bench/device_check.sh", "--cpu-smoke", "--rounds", "1", "--steps", "1"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "device_check.json").read_text())
    env_info = report["env"]
    assert env_info["backend"] == "cpu" and env_info["matmul_tflops"]["float32"] > 0
    bodies = {r["body"]: r for r in report["results"]}
    assert set(bodies) == {"roberta_base", "swin_base"}
    for name, res in bodies.items():
        assert "error" not in res and res["skipped"] == []
        rows = res["variants"]
        assert list(rows) == ["ft_f32_remat", "ft_f32", "ft_bf16", "pare", "mona"], name
        for variant, row in rows.items():
            assert row["step_s"] > 0 and row["flops"] > 0, (name, variant)
            assert math.isfinite(row["ratio_to_ft_f32"]), (name, variant)
        assert rows["ft_f32"]["ratio_to_ft_f32"] == 1.0
        # The meta-step differentiates through an inner step: more FLOPs than the plain step.
        assert rows["mona"]["flops"] > rows["ft_f32"]["flops"], name
    table = (tmp_path / "device_check.md").read_text()
    assert table.count("| roberta_base |") == 5 and table.count("| swin_base |") == 5
    assert (tmp_path / "device_check.log").exists()
