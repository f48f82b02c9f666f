"""Methods as records: config_lib and train_lib read methods only through ``methods.METHODS``.

The example below is a whole (trivial, not shipped) method: input-noise fine-tuning with a learned
noise scale. Everything it adds — a stage kind, a stage key with its range, a check, a parameter
group and its initialiser — lives in one ``Method`` record; no library file is edited.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xmodal_jax import config_lib, methods
from xmodal_jax.methods.base import Method, Stage
from xmodal_jax.methods.finetune import task_loss_fn


def _noisy_stage(name, cfg, ctx):
    task_loss = task_loss_fn(ctx)

    def loss_fn(params, batch, rng):
        scale = jax.nn.softplus(params["noise_scale"]["raw"])
        noise = jax.random.normal(rng, batch["x"].shape, batch["x"].dtype)
        noisy = {**batch, "x": batch["x"] + float(cfg.noise_std) * scale * noise}
        loss, metrics = task_loss(params, noisy, rng)
        return loss, {**metrics, "noise_scale": scale}

    return Stage(
        name=name,
        trainable=tuple(cfg.trainable),
        datasets={"": ctx.splits["train"]},
        loss_fn=loss_fn,
    )


def _init(name, cfg, ctx, key):
    del name, cfg, ctx, key
    return {"noise_scale": {"raw": jnp.zeros((), jnp.float32)}}


def _check(get, where):
    if get("kind") == "noisy" and "noise_scale" not in get("trainable"):
        return [f"{where}trainable: a noisy stage trains its noise_scale group"]
    return []


NOISY = Method(
    name="noisy",
    stage_kinds={"noisy": _noisy_stage},
    defaults={"noise_std": 0.1},
    ranges=(("noise_std", 0.0, None, True),),
    groups=("noise_scale",),
    param_inits={"noisy": _init},
    check=_check,
)


@pytest.fixture
def registered(monkeypatch):
    """Registers NOISY for one test; the registry is restored afterwards."""
    monkeypatch.setattr(methods, "METHODS", methods.METHODS)
    monkeypatch.setattr(methods, "STAGE_KINDS", dict(methods.STAGE_KINDS))
    monkeypatch.setattr(methods, "PARAM_INITS", dict(methods.PARAM_INITS))
    methods.register(NOISY)


def _noisy_config(tiny_config, **stage):
    cfg = tiny_config("steps=3")
    name = config_lib.stage_names(cfg)[-1]
    values = dict(kind="noisy", trainable=("embedder", "body", "head", "noise_scale"), steps=3)
    config_lib.add_stage(cfg, "noisy", **{**values, **stage})
    del cfg.stages[name]
    cfg.stage_order = "noisy"
    return cfg


def test_a_method_is_one_record_its_keys_ranges_and_checks_validate(registered, tiny_config):
    assert "noise_std" in config_lib.stage_defaults() and "noise_scale" in config_lib.groups()
    config_lib.validate(_noisy_config(tiny_config), num_devices=1)
    with pytest.raises(config_lib.ConfigError, match="stages.noisy.noise_std: must be ≥ 0"):
        config_lib.validate(_noisy_config(tiny_config, noise_std=-1.0), num_devices=1)
    with pytest.raises(config_lib.ConfigError, match="trains its noise_scale group"):
        config_lib.validate(
            _noisy_config(tiny_config, trainable=("embedder", "body", "head")), num_devices=1
        )


def test_a_registered_method_trains_through_the_one_loop(registered, tiny_config, tmp_path):
    from xmodal_jax import train_lib

    res = train_lib.train(_noisy_config(tiny_config), str(tmp_path / "run"), verbose=False)
    assert np.isfinite(res["test_last"]) and res["steps"] == 3
    recs = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    scales = [r["noise_scale"] for r in recs if r["split"] == "train" and "noise_scale" in r]
    assert scales and all(np.isfinite(scales))


def test_register_refuses_what_another_method_owns(registered):
    import dataclasses

    for clash in (
        dict(stage_kinds={"mona": _noisy_stage}),  # MoNA's stage kind
        dict(defaults={"meta_lambda": 1.0}),  # MoNA's key
        dict(groups=("gate",)),  # PaRe's group
    ):
        with pytest.raises(ValueError, match="already exist"):
            blank = dict(stage_kinds={"other": _noisy_stage}, defaults={}, groups=(), ranges=())
            methods.register(dataclasses.replace(NOISY, name="other", **{**blank, **clash}))


def test_without_registration_the_kind_and_key_are_unknown(tiny_config):
    cfg = tiny_config()
    with pytest.raises(ValueError, match="unknown key"):
        config_lib.add_stage(cfg, "noisy", kind="noisy", noise_std=0.1)
