"""Runs that cannot be poisoned: bad keys, changed configs, damaged checkpoints, bad numbers.

One test per promise of the README's "Failure behaviour" section (tiny configs throughout).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest

import xmodal_jax as xm
from tests import test_nb360 as files
from xmodal_jax import checkpoint, config_lib, train_lib
from xmodal_jax.data import nb360, pde_solvers
from xmodal_jax.data.formats import DataFormatError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _steps(workdir, sub="checkpoints"):
    d = os.path.join(workdir, sub)
    return sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []


# --- keys that destroy or mislead ----------------------------------------------------------------


def test_every_out_of_range_key_is_refused_by_name(tiny_config):
    cfg = tiny_config()
    cfg.stages.finetune.update(dict(lr=float("inf"), steps=-3, momentum=1.5, clip=-1.0))
    cfg.checkpoint.update(dict(keep=0, every_steps=-1))
    cfg.update(dict(eval_every=-2, log_every=0))
    with pytest.raises(config_lib.ConfigError) as e:
        config_lib.validate(cfg)
    msg = str(e.value)
    for needle in (
        "stages.finetune.lr: must be finite, got inf",
        "stages.finetune.steps: must be ≥ 0, got -3",
        "stages.finetune.momentum: must be ≥ 0.0 and < 1.0, got 1.5",
        "stages.finetune.clip: must be ≥ 0.0, got -1.0",
        "checkpoint.keep: must be ≥ 1, got 0",
        "checkpoint.every_steps: must be ≥ 0, got -1",
        "eval_every: must be ≥ 0, got -2",
        "log_every: must be ≥ 1, got 0",
    ):
        assert needle in msg, (needle, msg)


def test_unknown_and_missing_keys_name_the_closest_match(tiny_config):
    cfg = tiny_config()
    cfg.stages.finetune.lrr = 1e-3
    cfg.chekpoint = 3
    del cfg["log_every"]
    with pytest.raises(config_lib.ConfigError) as e:
        config_lib.validate(cfg)
    msg = str(e.value)
    assert "stages.finetune.lrr: unknown key; did you mean 'lr'?" in msg
    assert "chekpoint: unknown key; did you mean 'checkpoint'?" in msg
    assert "log_every: missing" in msg


def test_a_freeze_regex_that_matches_nothing_is_refused(tiny_config):
    cfg = tiny_config()
    cfg.stages.finetune.freeze = r"body/.*atention/"
    with pytest.raises(ValueError, match=r"freeze='body/\.\*atention/' matches no parameter"):
        train_lib.build_stages(train_lib.setup(cfg))


# --- resuming under a changed config -------------------------------------------------------------


def test_resume_under_a_changed_config_is_refused_before_anything_is_touched(tiny_config, tmp_path):
    wd = str(tmp_path / "run")
    cfg = tiny_config("steps=8", **{"checkpoint.every_steps": 2, "stop_after": 4})
    with pytest.raises(train_lib.Stopped):
        train_lib.train(cfg, wd, verbose=False)
    before = _steps(wd)
    changed = tiny_config("steps=8", **{"checkpoint.every_steps": 2})
    changed.stages.finetune.lr = 1e-3
    changed.body.init = "random"
    with pytest.raises(config_lib.ConfigError) as e:
        train_lib.train(changed, wd, verbose=False)
    msg = str(e.value)
    assert (
        "stages.finetune.lr: 0.0001 → 0.001" in msg and "body.init: 'pretrained' → 'random'" in msg
    )
    assert "--config.resume=force" in msg and _steps(wd) == before
    # Keys that do not change the trajectory may change; the resume completes.
    same = tiny_config("steps=8", **{"checkpoint.every_steps": 2, "log_every": 3})
    res = train_lib.train(same, wd, verbose=False)
    assert res["steps"] == 8
    # A changed shape, forced, is a clear error naming the differing leaves.
    forced = tiny_config("steps=8", **{"checkpoint.every_steps": 2, "resume": "force"})
    forced.task.num_classes = 5
    with pytest.raises(
        checkpoint.CheckpointError, match=r"head/linear/kernel: checkpoint \(32, 3\)"
    ):
        train_lib.train(forced, wd, verbose=False)


# --- damaged checkpoints -------------------------------------------------------------------------


def _damage(step_dir):
    """Truncates every array file of a checkpoint step (the kind of damage a full disk leaves)."""
    for root, _, names in os.walk(os.path.join(step_dir, "state")):
        for name in names:
            path = os.path.join(root, name)
            if os.path.getsize(path) > 64:
                with open(path, "r+b") as f:
                    f.truncate(16)


def test_restore_walks_back_past_damaged_checkpoints(tiny_config, tmp_path, caplog):
    wd = str(tmp_path / "run")
    cfg = tiny_config("steps=8", **{"checkpoint.every_steps": 2, "checkpoint.keep": 3})
    cfg.stop_after = 6
    with pytest.raises(train_lib.Stopped):
        train_lib.train(cfg, wd, verbose=False)
    assert _steps(wd) == [2, 4, 6]
    _damage(os.path.join(wd, "checkpoints", "6"))
    os.makedirs(os.path.join(wd, "checkpoints", "9"))  # a stray empty step folder
    cfg.stop_after = 0
    with caplog.at_level("WARNING"):
        res = train_lib.train(cfg, wd, verbose=False)
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert os.path.join(wd, "checkpoints", "9") in warned
    assert os.path.join(wd, "checkpoints", "6") in warned
    assert res["steps"] == 8 and np.isfinite(res["test_last"])
    # The resumed run is the uninterrupted one: it went on from step 4.
    straight = train_lib.train(tiny_config("steps=8"), str(tmp_path / "straight"), verbose=False)
    assert res["test_last"] == pytest.approx(straight["test_last"])


def test_eval_prefers_an_intact_best_over_a_damaged_step_folder(tiny_config, tmp_path):
    from train.evaluate import evaluate_workdir

    wd = str(tmp_path / "run")
    cfg = tiny_config("steps=6", **{"checkpoint.every_steps": 2, "eval_every": 2})
    res = train_lib.train(cfg, wd, verbose=False)
    step = res["best_step"]
    assert step in _steps(wd, "best")
    if step in _steps(wd):
        _damage(os.path.join(wd, "checkpoints", str(step)))
    got = evaluate_workdir(wd, step, "test")
    assert got["value"] == pytest.approx(res["test_best"]) and got["step"] == step
    # Any mesh on this machine's devices, and an eval batch that is rounded to it.
    got = evaluate_workdir(wd, "best", "test", mesh=(2, 4))
    assert got["value"] == pytest.approx(res["test_best"])


def test_eval_refuses_a_workdir_that_does_not_exist(tmp_path):
    from train.evaluate import evaluate_workdir

    with pytest.raises(FileNotFoundError, match="does not exist"):
        evaluate_workdir(str(tmp_path / "typo"))
    assert not (tmp_path / "typo").exists()


def test_a_kill_loses_at_most_one_save_interval(tiny_bert_path, tmp_path):
    wd = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "train.main",
        "--config",
        "configs/tiny.py:steps=400",
        "--workdir",
        str(wd),
        f"--config.body.path={tiny_bert_path}",
        "--config.checkpoint.every_steps=4",
        "--config.log_every=1",
        "--config.eval_every=1000",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = wd / "metrics.jsonl"
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            time.sleep(0.2)
            if metrics.exists() and sum(1 for _ in open(metrics)) >= 23:
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    logged = max(json.loads(line)["step"] for line in open(metrics) if line.strip())
    committed = checkpoint.Checkpointer(str(wd)).resolve("latest")
    assert committed is not None and logged - committed[1] <= 4 + 1  # + the step in flight


# --- tools that overwrite or invent --------------------------------------------------------------


def test_make_pde_refuses_to_overwrite(tmp_path):
    pde_solvers.write_dataset("advection", 4, 16, str(tmp_path))
    with pytest.raises(FileExistsError, match="--overwrite"):
        pde_solvers.write_dataset("advection", 4, 16, str(tmp_path))
    pde_solvers.write_dataset("advection", 4, 16, str(tmp_path), overwrite=True)
    proc = subprocess.run(
        [sys.executable, "-m", "train.make_pde", "--task", "advection", "--n", "4", "--res", "16"]
        + ["--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "exists" in proc.stderr


# --- bad numbers ---------------------------------------------------------------------------------


def test_readers_refuse_nan_inputs(tmp_path):
    files._write_satellite(str(tmp_path), n_train=48, n_test=24)
    obj = np.load(tmp_path / "satellite_train.npy", allow_pickle=True).item()
    obj["data"][5, 3] = np.nan
    np.save(tmp_path / "satellite_train.npy", obj)
    with pytest.raises(DataFormatError, match=r"satellite_train.npy: field 'data' has NaN/inf.*5"):
        nb360.read_satellite(str(tmp_path))
    folder, _ = files._write_ninapro(str(tmp_path))
    x = np.load(os.path.join(folder, "ninapro_val.npy"))
    x[2, 0, 0] = np.inf
    np.save(os.path.join(folder, "ninapro_val.npy"), x)
    with pytest.raises(DataFormatError, match=r"ninapro_val.npy: field 'ninapro' has NaN/inf"):
        nb360.read_ninapro(str(tmp_path))
    arrays = files._deepsea_arrays()
    arrays["x_test"] = arrays["x_test"].astype(np.float32)
    arrays["x_test"][1, 7, 2] = np.nan
    np.savez(tmp_path / "deepsea_filtered.npz", **arrays)
    with pytest.raises(DataFormatError, match=r"field 'x_test' has NaN/inf values in 1 samples"):
        nb360.read_deepsea(str(tmp_path))


def test_a_body_folder_with_nan_weights_is_refused(tiny_bert_path, tmp_path):
    from safetensors.numpy import load_file, save_file

    folder = tmp_path / "nan_body"
    shutil.copytree(tiny_bert_path, folder)
    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    key = next(k for k in tensors if k.endswith("attention.self.query.weight"))
    tensors[key][0, 0] = np.nan
    save_file(tensors, str(path))
    with pytest.raises(
        xm.WeightLoadError, match=r"(?s)NaN/inf weights.*query.weight in .*\(1 values\)"
    ):
        xm.load_pretrained(str(folder))


def test_token_ids_outside_the_vocabulary_are_refused(minilm):
    for bad in (30522, -1):
        with pytest.raises(ValueError, match=rf"token id {bad} is outside the vocabulary"):
            minilm.apply(minilm.params, input_ids=np.array([[101, bad, 102]]))


def test_apply_refuses_params_built_for_another_task(minilm):
    four = xm.TaskSpec((1, 8), "classification", 4, target_seq_len=8)
    graphdef, params = xm.build_crossmodal(four, minilm)
    _, three = xm.build_crossmodal(xm.TaskSpec((1, 8), "classification", 3), minilm)
    with pytest.raises(ValueError, match=r"head/linear/kernel: got \(384, 3\), .* \(384, 4\)"):
        xm.apply(graphdef, {**params, "head": three["head"]}, jnp.ones((2, 1, 8)))
    assert xm.apply(graphdef, params, jnp.ones((2, 1, 8))).shape == (2, 4)
