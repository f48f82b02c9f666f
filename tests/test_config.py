"""Configs: big_vision-style args, validation before compilation, CLI overrides."""

from __future__ import annotations

import subprocess
import sys

import ml_collections
import pytest

from configs import demo, tiny
from configs.common import parse_arg
from xmodal_jax import config_lib


def test_parse_arg_types_and_unknown_keys():
    a = parse_arg("steps=5,align=otdd,quick", steps=1, align="none", quick=False, lr=0.1)
    assert (a.steps, a.align, a.quick, a.lr) == (5, "otdd", True, 0.1)
    with pytest.raises(ValueError, match="config arg 'stepz' unknown"):
        parse_arg("stepz=5", steps=1)
    with pytest.raises(ValueError, match="steps='x': expected int"):
        parse_arg("steps=x", steps=1)


def test_shipped_configs_validate():
    for cfg in (tiny.get_config(), tiny.get_config("align=otdd"), demo.get_config()):
        config_lib.validate(cfg, num_devices=1)


@pytest.mark.parametrize(
    "module,args",
    [
        *[("demo", f"method={m}") for m in ("finetune", "orca", "mona", "pare")],
        *[("tabular", f"name=iris,method={m}") for m in ("finetune", "orca", "mona", "pare")],
        *[("ucr", f"name=GunPoint,method={m}") for m in ("finetune", "orca", "mona", "pare")],
        ("digits2d", "method=mona"),
        ("pdebench", "pde=advection,data_dir=/nonexistent,method=mona"),
        ("nb360", "task=ecg,data_dir=/nonexistent,method=orca"),
        *[("lsg", f"dataset=digits,labels=15,mode={m}") for m in ("ce", "ceaug", "tl", "ssl")],
        *[("lsg", f"dataset={d},labels=15,mode=ssl") for d in ("basicmotions", "iris")],
    ],
)
def test_every_shipped_recipe_validates(module, args):
    # Every config file × method a user can name on the command line, without reading data.
    import importlib

    cfg = importlib.import_module(f"configs.{module}").get_config(args)
    config_lib.validate(cfg, num_devices=1)


def _unlocked(arg=None):
    c = tiny.get_config(arg)
    c.unlock()
    return c


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda c: c.stages.finetune.__setitem__("lrr", 1.0), "stages.finetune.lrr: unknown key"),
        (lambda c: c.stages.finetune.__setitem__("optimizer", "lamb"), "optimizer: 'lamb'"),
        (lambda c: c.stages.finetune.__setitem__("trainable", ("bodyy",)), "trainable"),
        (lambda c: c.stages.finetune.__setitem__("lr", -1.0), "stages.finetune.lr: must be > 0"),
        (lambda c: c.__setitem__("stage_order", "finetune,nope"), "stage 'nope' not in"),
        (
            lambda c: c.__setitem__(
                "data", ml_collections.ConfigDict({**c.data, "batch_size": "8"})
            ),
            "data.batch_size: expected int",
        ),
        (lambda c: c.data.__setitem__("batch_sizes", 8), "data.batch_sizes: unknown key"),
        (lambda c: c.stages.finetune.__setitem__("kind", "magic"), "kind: 'magic' not in"),
        (lambda c: c.__setitem__("sharding_rules", (("x", "shard"),)), "sharding_rules[0]"),
    ],
)
def test_validation_names_the_key(mutate, message):
    c = _unlocked()
    mutate(c)
    with pytest.raises(ValueError) as err:
        config_lib.validate(c)
    assert message in str(err.value)


def test_batch_must_divide_devices_and_accumulation():
    c = _unlocked("batch=12")
    with pytest.raises(ValueError, match="batch_size=12 is not divisible by the 8 devices"):
        config_lib.validate(c, num_devices=8)
    c = _unlocked("batch=8")
    c.stages.finetune.accum = 2
    with pytest.raises(ValueError, match="accum × devices = 16"):
        config_lib.validate(c, num_devices=8)


def test_add_stage_rejects_unknown_keys():
    c = config_lib.base_config()
    with pytest.raises(ValueError, match=r"stages.x: unknown key\(s\) \['learning_rate'\]"):
        config_lib.add_stage(c, "x", learning_rate=1.0)


def test_cli_rejects_unknown_override(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "train.main",
            "--config",
            "configs/tiny.py",
            "--workdir",
            str(tmp_path),
            "--config.stages.finetune.lrr=3",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "stages.finetune has no key 'lrr'; did you mean 'stages.finetune.lr'?" in proc.stderr
    assert "Valid keys at stages.finetune: [" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "checkpoints").exists()
