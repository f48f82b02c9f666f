"""A 2-process CPU run (jax.distributed on localhost, gloo) equals the 1-process run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from tests.test_train import ROOT, train_losses


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict:
    # Not the suite's fake-device flag (each process gets `devices` through JAX_NUM_CPU_DEVICES);
    # the rest of XLA_FLAGS (the suite's optimisation level, tests/conftest.py) carries over.
    flags = os.environ.get("XLA_FLAGS", "").split()
    keep = " ".join(f for f in flags if not f.startswith("--xla_force_host_platform_device_count"))
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if keep:
        env["XLA_FLAGS"] = keep
    env.update(JAX_NUM_CPU_DEVICES=str(devices), JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")
    return env


def _cmd(tiny_bert_path, workdir, *extra):
    return [
        sys.executable,
        "-m",
        "train.main",
        "--config",
        "configs/tiny.py:steps=10,align=otdd",
        "--workdir",
        str(workdir),
        f"--config.body.path={tiny_bert_path}",
        "--config.log_every=1",
        *extra,
    ]


def _launch_two(tiny_bert_path, workdir) -> list[subprocess.Popen]:
    """Starts the 2-process run (2 CPU devices each) of ``_cmd`` on ``workdir``."""
    port = _free_port()
    return [
        subprocess.Popen(
            _cmd(
                tiny_bert_path,
                workdir,
                f"--coordinator=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ),
            cwd=ROOT,
            env=_env(2),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]


def _run_one(tiny_bert_path, workdir, *extra) -> None:
    """The 1-process run (4 CPU devices) of ``_cmd`` on ``workdir``; it must succeed."""
    proc = subprocess.run(
        _cmd(tiny_bert_path, workdir, *extra),
        cwd=ROOT,
        env=_env(4),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def _wait_two(procs: list[subprocess.Popen]) -> list[tuple[str, str]]:
    """Waits for the 2-process run; both must succeed. Returns their (stdout, stderr)."""
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    return outs


def test_two_processes_match_one_process(tiny_bert_path, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    procs = _launch_two(tiny_bert_path, two)
    _run_one(tiny_bert_path, one)  # beside the 2-process run: 3 processes on the CPU at once
    _wait_two(procs)
    a, b = train_losses(one), train_losses(two)
    assert sorted(a) == sorted(b) == list(range(1, 16))
    rel = max(abs(a[s] - b[s]) / abs(a[s]) for s in a)
    print(f"\n2 processes × 2 devices vs 1 process × 4 devices: max relative loss diff {rel:.2e}")
    assert rel <= 1e-5
    ra = json.loads((one / "results.json").read_text())
    rb = json.loads((two / "results.json").read_text())
    assert ra["test_best"] == pytest.approx(rb["test_best"])

    # The 2-process checkpoint restores in this single process (8 devices, another mesh).
    from train.evaluate import evaluate_workdir

    got = evaluate_workdir(str(two), "best", "test")
    assert got["value"] == pytest.approx(rb["test_best"])


@pytest.mark.slow
def test_one_process_run_resumes_in_two_processes(tiny_bert_path, tmp_path):
    """A 1-process run stopped after 6 steps resumes in 2 processes (``pytest -m slow``)."""
    one, part = tmp_path / "one", tmp_path / "one_then_two"
    _run_one(tiny_bert_path, one)
    _run_one(tiny_bert_path, part, "--config.stop_after=6")
    outs = _wait_two(_launch_two(tiny_bert_path, part))
    assert "resuming" in outs[0][1] + outs[0][0]
    a, c = train_losses(one), train_losses(part)
    rel = max(abs(a[s] - c[s]) / abs(a[s]) for s in a)
    print(f"\n1 process (6 steps) → resumed in 2 processes vs 1 process: max rel. diff {rel:.2e}")
    assert sorted(c) == sorted(a) and rel <= 1e-5
