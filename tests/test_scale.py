"""Every method's step on mixed (2×4), FSDP (1×8) and data (8×1) meshes equals the 1-device run.

The default run checks the 2×4 mesh (both axes at once); ``pytest -m slow`` adds 1×8 and 8×1.
"""

from __future__ import annotations

import json

import pytest

from tests.test_train import train_losses
from xmodal_jax import config_lib, train_lib


def _all_methods_config(tiny_config, data: int, fsdp: int, n: int):
    """One run whose stages are every method's step, 2 steps each (no evaluation in between)."""
    mesh = {"mesh.data": data, "mesh.fsdp": fsdp, "mesh.num_devices": n, "log_every": 1}
    cfg = tiny_config("steps=2,align=otdd", **mesh)
    cfg.source.update(dict(kind="text", max_examples=64, seq_len=8, pack=True))
    config_lib.add_stage(
        cfg, "mona", kind="mona", trainable=("embedder", "head"), steps=2, inner_lr=1e-3
    )
    config_lib.add_stage(
        cfg,
        "pare",
        kind="pare",
        trainable=("embedder", "body", "head", "gate", "source_head"),
        steps=2,
        pare_phase_a_epochs=1,
    )
    for name in ("align", "mona", "pare", "finetune"):
        cfg.stages[name].evaluate = False
    cfg.stage_order = "align,mona,pare,finetune"
    return cfg


def _meshes_match_one_device(tiny_config, tmp_path, meshes) -> dict:
    """Trains every method's step on each ``(data, fsdp)`` mesh; returns per-device arg bytes.

    Each mesh's losses must equal the 1-device run's to 1e-5 relative; the returned dict maps
    each mesh (and ``(1, 1)``, the 1-device run) to its fine-tune step's argument bytes.
    """
    ref_dir = tmp_path / "one"
    train_lib.train(_all_methods_config(tiny_config, 1, 1, 1), str(ref_dir), verbose=False)
    ref = train_losses(ref_dir)
    assert sorted(ref) == list(range(1, 8))  # 1 align (OTDD) + 2 MoNA + 2 PaRe + 2 fine-tune
    one = json.loads((ref_dir / "compile.json").read_text())["finetune"]
    args = {(1, 1): one["argument_bytes"]}
    worst = {}
    for data, fsdp in meshes:
        wd = tmp_path / f"{data}x{fsdp}"
        train_lib.train(_all_methods_config(tiny_config, data, fsdp, 8), str(wd), verbose=False)
        got = train_losses(wd)
        assert sorted(got) == sorted(ref)
        worst[(data, fsdp)] = max(abs(got[s] - ref[s]) / abs(ref[s]) for s in ref)
        stats = json.loads((wd / "compile.json").read_text())
        assert set(stats) == {"align", "mona", "pare", "finetune"}
        assert all(v["flops"] > 0 and v["peak_bytes"] > 0 for v in stats.values())
        args[(data, fsdp)] = stats["finetune"]["argument_bytes"]
    print(f"\nOTDD, MoNA, PaRe, fine-tune steps: max relative loss diff vs 1 device {worst}")
    assert max(worst.values()) <= 1e-5
    return args


def test_every_methods_step_on_a_mixed_mesh_gives_the_one_device_losses(tiny_config, tmp_path):
    """The default run's check: the 2×4 mesh shards both the batch and the parameters."""
    args = _meshes_match_one_device(tiny_config, tmp_path, [(2, 4)])
    # FSDP really shards: each device holds 1/4 of every matched kernel under fsdp = 4.
    print(
        f"fine-tune step's per-device argument bytes, 2x4 / 1 device: {args[2, 4] / args[1, 1]:.3f}"
    )
    assert args[2, 4] / args[1, 1] < 0.5


@pytest.mark.slow
def test_every_methods_step_on_every_mesh_gives_the_one_device_losses(tiny_config, tmp_path):
    """The pure FSDP (1×8) and pure data-parallel (8×1) meshes (``pytest -m slow``)."""
    args = _meshes_match_one_device(tiny_config, tmp_path, [(1, 8), (8, 1)])
    # FSDP really shards: each device holds 1/8 of every matched kernel under fsdp = 8.
    print(f"per-device argument bytes, fsdp 8 / data 8: {args[1, 8] / args[8, 1]:.3f}")
    assert args[1, 8] / args[8, 1] < 0.5


def test_bfloat16_compute_with_float32_master_weights(tiny_config, tmp_path):
    import jax
    import numpy as np

    from tests.test_train import saved_params
    from xmodal_jax.models import crossmodal

    losses = {}
    for dtype in ("float32", "bfloat16"):
        cfg = tiny_config("steps=4", **{"compute_dtype": dtype, "log_every": 1})
        train_lib.train(cfg, str(tmp_path / dtype), verbose=False)
        losses[dtype] = train_losses(tmp_path / dtype)
    # The optimizer keeps float32 masters; the step really computes in bf16.
    assert {a.dtype for a in jax.tree.leaves(saved_params(tmp_path / "bfloat16"))} == {
        np.dtype("float32")
    }
    run = train_lib.setup(tiny_config("steps=6", compute_dtype="bfloat16"))
    x = run.splits["train"]["x"][:4]
    fwd = jax.jit(lambda p, x: crossmodal.apply(run.graphdef, p, x))
    assert "bf16" in fwd.lower(run.params, x).as_text() and fwd(run.params, x).dtype == np.float32
    f32, bf16 = losses["float32"], losses["bfloat16"]
    rel = max(abs(bf16[s] - f32[s]) / abs(f32[s]) for s in f32)
    print(f"\nbf16 vs f32 compute, 4 steps: max relative loss diff {rel:.2e}")
    assert 0 < rel <= 0.05


def test_block_activations_are_pinned_batch_sharded_under_a_mesh(tiny_config):
    """Under ``jax.set_mesh`` every block's input/output carries a batch-sharding constraint.

    Outside a mesh (plain single-device JAX code) the model lowers without any constraint, and
    the constraint changes no value: a 1×8 FSDP forward equals the unconstrained one.
    """
    import jax
    import numpy as np

    from xmodal_jax import parallel
    from xmodal_jax.models import crossmodal

    run = train_lib.setup(tiny_config("steps=2", **{"mesh.data": 1, "mesh.fsdp": 8}))
    x = np.asarray(run.splits["train"]["x"][:8])
    fwd = jax.jit(lambda p, x: crossmodal.apply(run.graphdef, p, x))
    plain_text = fwd.lower(run.params, x).as_text()
    plain = np.asarray(fwd(run.params, x))
    layers = len(run.params["body"]["layers"])
    with jax.set_mesh(run.mesh):
        fwd = jax.jit(lambda p, x: crossmodal.apply(run.graphdef, p, x))
        text = fwd.lower(run.params, parallel.shard_batch(x, run.mesh)).as_text()
        sharded = np.asarray(parallel.to_host(fwd(run.params, parallel.shard_batch(x, run.mesh))))
        # An odd leading dim cannot be split over 8 devices: left unconstrained, still runs.
        odd = fwd.lower(run.params, x[:3]).as_text()
    assert "sharding_constraint" not in plain_text and "sharding_constraint" not in odd
    # Input and output of each block; consecutive ones may be merged by the lowering.
    constraints = [ln for ln in text.splitlines() if "sharding_constraint" in ln]
    assert len(constraints) >= layers + 1
    assert all('{"data", "fsdp"}' in ln for ln in constraints), constraints[0]
    print(f"\n{len(constraints)} constraints for {layers} blocks: {constraints[0].strip()[:160]}")
    np.testing.assert_allclose(sharded, plain, rtol=1e-5, atol=1e-6)


def test_optimizer_moments_are_sharded_like_their_params(tiny_config):
    """ZeRO-3: under fsdp = 8 each AdamW moment of a sharded kernel is sharded like the kernel.

    ``jax.jit(tx.init)`` alone placed the moments on one device (then replicated), so FSDP
    params carried full-size moments on every device.
    """
    import jax
    import optax

    def flat(tree):
        leaves = jax.tree_util.tree_flatten_with_path(
            tree, is_leaf=lambda x: isinstance(x, optax.MaskedNode)
        )[0]
        return {"/".join(str(getattr(k, "key", k)) for k in path): x for path, x in leaves}

    run = train_lib.setup(tiny_config("steps=2", **{"mesh.data": 1, "mesh.fsdp": 8}))
    stage, scfg, n = train_lib.build_stages(run)[-1]
    scfg.optimizer = "adamw"  # two param-shaped moments
    tx = train_lib.make_optimizer(scfg, run.params, n)
    state = train_lib.init_state(run, tx, 0)
    params = flat(state.params)
    trained = {
        k
        for k, x in params.items()
        if "fsdp" in str(x.sharding.spec) and k.split("/")[0] in stage.trainable
    }
    assert trained, "the tiny body has fsdp-sharded trainable kernels"
    adam = [
        s
        for s in jax.tree.leaves(
            state.opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState)
        )
        if isinstance(s, optax.ScaleByAdamState)
    ]
    assert len(adam) == 1
    for moment in (flat(adam[0].mu), flat(adam[0].nu)):
        for k in trained:
            assert moment[k].sharding.spec == params[k].sharding.spec, k
            # Each device holds 1/8 of the moment's elements.
            assert moment[k].addressable_shards[0].data.size * 8 == moment[k].size, k
    print(f"\n{len(trained)} sharded trainable kernels; both AdamW moments sharded like them")
