"""End-to-end trainer runs on a tiny BERT: mesh equivalence, resume, kill, SIGTERM, NaN, CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from xmodal_jax import checkpoint, train_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_losses(workdir) -> dict[int, float]:
    recs = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return {r["step"]: r["loss"] for r in recs if r["split"] == "train"}


def saved_params(workdir, step=None):
    mgr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
    step = mgr.latest_step() if step is None else step
    out = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    mgr.close()
    return out["state"]["params"]


def cli(tiny_bert_path, workdir, *extra, arg="steps=20,align=otdd"):
    return [
        sys.executable,
        "-m",
        "train.main",
        "--config",
        f"configs/tiny.py:{arg}",
        "--workdir",
        str(workdir),
        f"--config.body.path={tiny_bert_path}",
        *extra,
    ]


def test_fsdp_mesh_shards_body_weights(tiny_config):
    cfg = tiny_config(**{"mesh.data": 4, "mesh.fsdp": 2})
    run = train_lib.setup(cfg)
    q = run.params["body"]["layers"][0]["attn"]["query"]["kernel"]
    assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp")
    assert q.addressable_shards[0].data.shape == (32, 16)  # half of the 32 outputs per shard
    head = run.params["head"]["linear"]["kernel"]
    assert head.sharding.is_fully_replicated


def test_resume_in_new_process_is_bit_identical(tiny_bert_path, tiny_config, tmp_path):
    straight = tmp_path / "straight"
    results = train_lib.train(tiny_config("steps=20,align=otdd"), str(straight), verbose=False)
    resumed = tmp_path / "resumed"
    first = subprocess.run(
        cli(tiny_bert_path, resumed, "--config.stop_after=15"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert first.returncode == 0, first.stderr[-3000:]
    assert "stop_after=15: saved step 15" in first.stderr
    second = subprocess.run(
        cli(tiny_bert_path, resumed), cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming" in second.stdout
    a, b = saved_params(straight), saved_params(resumed)
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b) > 0
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(x, y)
    # Losses logged after the resume equal the straight run's, step for step.
    la, lb = train_losses(straight), train_losses(resumed)
    assert {s: lb[s] for s in la} == la
    # xmodal-eval restores the best checkpoint and reproduces the test metric.
    from train.evaluate import evaluate_workdir

    got = evaluate_workdir(str(straight), "best", "test")
    assert got["value"] == pytest.approx(results["test_best"])
    for name in ("metrics.jsonl", "results.json", "curves.png"):
        assert (straight / name).exists(), name
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(straight / "tensorboard"))


def _wait_for(predicate, proc, timeout=300):
    t0 = time.time()
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"process ended early:\n{proc.stderr.read()[-3000:]}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(0.05)


def _steps(workdir):
    d = os.path.join(workdir, "checkpoints")
    return sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []


def test_sigkill_mid_save_resumes_from_last_complete_checkpoint(tiny_bert_path, tmp_path):
    wd = tmp_path / "killed"
    cmd = cli(tiny_bert_path, wd, "--config.checkpoint.every_steps=1", arg="steps=24")
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _wait_for(lambda: len(_steps(wd)) >= 3, proc)
    proc.send_signal(signal.SIGKILL)  # saves happen every step: likely mid-save
    proc.wait()
    ckpt = checkpoint.Checkpointer(str(wd))
    complete = ckpt.steps()
    meta = ckpt.read_meta("latest")
    ckpt.close()
    assert complete and meta["step"] == complete[-1]
    resumed = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"step {meta['stage_step']}" in resumed.stdout  # resumed where the checkpoint was
    results = json.loads((wd / "results.json").read_text())
    assert np.isfinite(results["test_last"])
    assert max(_steps(wd)) == 24


def test_sigterm_saves_then_exits(tiny_bert_path, tmp_path):
    wd = tmp_path / "term"
    cmd = cli(tiny_bert_path, wd, arg="steps=200")
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _wait_for(lambda: len(_steps(wd)) >= 1, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-3000:]
    saved = int(err.split("SIGTERM: saved step ")[1].split()[0])
    assert max(_steps(wd)) == saved
    ckpt = checkpoint.Checkpointer(str(wd))
    assert ckpt.read_meta("latest")["step"] == saved
    ckpt.close()


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_config, tmp_path):
    cfg = tiny_config(
        "steps=20", **{"log_every": 1, "checkpoint.every_steps": 1, "eval_every": 1000}
    )
    cfg.stages.finetune.lr = 1e30
    cfg.stages.finetune.warmup_steps = 0
    cfg.stages.finetune.schedule = "constant"
    wd = tmp_path / "nan"
    # Step 1's loss is finite, but its update leaves weights ~1e30 whose outputs are inf: that
    # state is refused before it is saved, so no checkpoint exists at all.
    with pytest.raises(train_lib.TrainingDiverged, match=r"outputs at step 1 are not finite"):
        train_lib.train(cfg, str(wd), verbose=False)
    losses = train_losses(wd)
    assert all(np.isfinite(v) for v in losses.values())  # only finite losses were logged
    assert _steps(wd) == []


def test_a_diverging_stage_keeps_the_last_finite_checkpoint(tiny_config, tmp_path):
    # 5 good alignment steps (each saved), then a fine-tune stage at lr 1e30 diverges at its
    # first step: the latest checkpoint stays the last finite state, at step 5, and the
    # diverged state is neither saved, evaluated nor promoted to best.
    cfg = tiny_config(
        "steps=10,align=task", **{"log_every": 1, "checkpoint.every_steps": 1, "eval_every": 1}
    )
    cfg.stages.align.evaluate = True
    cfg.stages.finetune.update(dict(lr=1e30, warmup_steps=0, schedule="constant"))
    wd = tmp_path / "nan"
    with pytest.raises(train_lib.TrainingDiverged, match=r"at step 6"):
        train_lib.train(cfg, str(wd), verbose=False)
    assert max(_steps(wd)) == 5
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(saved_params(wd)))
    best = os.listdir(os.path.join(wd, "best"))
    assert best and all(int(b) <= 5 for b in best if b.isdigit())


def test_freeze_regex_keeps_matching_leaves_fixed(tiny_config, tmp_path):
    cfg = tiny_config("steps=3", **{"checkpoint.every_steps": 1})
    cfg.stages.finetune.freeze = r"body/.*attn/(query|key)/"
    run = train_lib.setup(cfg)
    before = jax.device_get(run.params["body"])
    train_lib.train(cfg, str(tmp_path), verbose=False)
    after = saved_params(tmp_path)["body"]
    layer0_b, layer0_a = before["layers"][0]["attn"], after["layers"]["0"]["attn"]
    for name in ("query", "key"):
        np.testing.assert_array_equal(layer0_a[name]["kernel"], layer0_b[name]["kernel"])
    assert not np.array_equal(layer0_a["value"]["kernel"], layer0_b["value"]["kernel"])
    bad = tiny_config("steps=3")
    bad.stages.finetune.freeze = "body/(("
    with pytest.raises(ValueError, match=r"stages.finetune.freeze: 'body/\(\(' is not a regex"):
        train_lib.setup(bad)
