"""Per-device memory of the fine-tune step for bodies that do not fit one device, from AOT compiles.

A RoBERTa-large body (355 M params; 24 layers, width 1024), or with ``--body swin_large`` a
Swin-large one (195 M params), is built **abstractly** from its published ``config.json``
fields (no weights are read or materialised), wrapped in the project's cross-modal model for a
1D (RoBERTa) or 2D (Swin) task, and the project's real fine-tune step
(``train_lib.build_train_step`` over ``finetune.task_loss_fn``, AdamW, state donated) is lowered
and compiled ahead of time on 8 fake CPU devices under several meshes, exactly as
``train_lib.train`` compiles it (same sharding rules, the run's mesh in context so block
activations are pinned batch-sharded). XLA's memory analysis then gives each device's argument,
temporary and output bytes. Nothing runs, so the numbers hold for any backend's layout only
approximately (CPU layouts and fusion differ from TPU/GPU), but the ratios between meshes are
what FSDP buys.

Run from the repository root (a few minutes on 2 cores; most of it is XLA compiling)::

    python bench/fsdp_memory.py
    python bench/fsdp_memory.py --batch 32 --tokens 128 --variants data8,fsdp8,fsdp8_remat
    python bench/fsdp_memory.py --body swin_large --batch 8 --variants data8,fsdp8
"""

from __future__ import annotations

import os

# 8 fake devices, set before jax is imported (keeps a caller's own XLA_FLAGS).
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
from flax import nnx  # noqa: E402

import xmodal_jax as xm  # noqa: E402
from xmodal_jax import config_lib, parallel, train_lib  # noqa: E402
from xmodal_jax.data.tasks import Task  # noqa: E402
from xmodal_jax.methods import finetune  # noqa: E402
from xmodal_jax.methods.base import Context, Stage  # noqa: E402
from xmodal_jax.models import crossmodal, layers, pretrained  # noqa: E402

# roberta-large's config.json (the fields our reader uses).
ROBERTA_LARGE = {
    "model_type": "roberta",
    "vocab_size": 50265,
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "hidden_act": "gelu",
    "max_position_embeddings": 514,
    "type_vocab_size": 1,
    "layer_norm_eps": 1e-5,
    "pad_token_id": 1,
}
# swin-large (in22k, 224 px, window 7)'s config.json.
SWIN_LARGE = {
    "model_type": "swin",
    "image_size": 224,
    "patch_size": 4,
    "num_channels": 3,
    "embed_dim": 192,
    "depths": [2, 2, 18, 2],
    "num_heads": [6, 12, 24, 48],
    "window_size": 7,
}
BODIES = {"roberta_large": ROBERTA_LARGE, "swin_large": SWIN_LARGE}
# name → (data, fsdp, remat policy, compute dtype)
VARIANTS = {
    "data8": (8, 1, "none", "float32"),
    "fsdp8": (1, 8, "none", "float32"),
    "2x4": (2, 4, "none", "float32"),
    "fsdp8_remat": (1, 8, "full", "float32"),
    "fsdp8_bf16": (1, 8, "none", "bfloat16"),
}
NUM_CLASSES = 10


def abstract_body(raw: dict, name: str) -> xm.Pretrained:
    """A :class:`Pretrained` whose params are ``ShapeDtypeStruct`` leaves (nothing allocated)."""
    arch = pretrained.ARCHITECTURES[raw["model_type"]]
    config = arch.resolve("config_cls").from_hf(raw, name)
    graphdef, params = pretrained.split(nnx.eval_shape(lambda: pretrained.build(arch, config)))
    return xm.Pretrained(name, raw["model_type"], arch.modality, config, graphdef, params)


def abstract_model(pre: xm.Pretrained, spec: xm.TaskSpec) -> tuple[nnx.GraphDef, dict]:
    """The cross-modal model's graphdef and abstract params, built under ``jax.eval_shape``."""
    holder = {}

    def build(body_params):
        graphdef, params = xm.build_crossmodal(spec, dataclasses.replace(pre, params=body_params))
        holder["graphdef"] = graphdef
        return params

    params = jax.eval_shape(build, pre.params)
    return holder["graphdef"], params


def compile_variant(
    pre: xm.Pretrained, spec: xm.TaskSpec, batch: int, variant: str
) -> dict[str, float]:
    """AOT-compiles the fine-tune step under one variant; returns ``train_lib.compile_stats``."""
    data, fsdp, remat, dtype = VARIANTS[variant]
    graphdef, params = abstract_model(pre, spec)
    graphdef = layers.with_remat(graphdef, params, remat)
    graphdef = crossmodal.with_compute_dtype(graphdef, params, dtype)
    mesh = parallel.make_mesh(data, fsdp)
    rules = [tuple(r) for r in config_lib.base_config().sharding_rules]
    psh = parallel.param_shardings(params, mesh, rules)
    params = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), params, psh
    )
    cfg = ml_collections.ConfigDict(
        {
            **config_lib.stage_defaults(),
            "optimizer": "adamw",
            "lr": 1e-4,
            "weight_decay": 0.01,
            "trainable": ("embedder", "body", "head"),
        }
    )
    run_cfg = ml_collections.ConfigDict({"seed": 0, "pos_weight": 1.0})
    task = Task("bench", spec, loss="ce", metric="error", load=lambda: {})
    ctx = Context(graphdef, task, pre, {"train": {}}, None, None, run_cfg)
    stage = Stage("finetune", tuple(cfg.trainable), {}, loss_fn=finetune.task_loss_fn(ctx))
    tx = train_lib.make_optimizer(cfg, params, 1000)
    with jax.set_mesh(mesh):
        opt = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            jax.eval_shape(tx.init, params),
            train_lib.opt_state_shardings(tx, params, psh, mesh),
        )
        rep = parallel.replicated(mesh)
        state = train_lib.TrainState(jax.ShapeDtypeStruct((), jnp.int32, sharding=rep), params, opt)
        state_sh = jax.tree.map(lambda a: a.sharding, state)
        bsh = parallel.batch_sharding(mesh)
        batch_in = {
            "x": jax.ShapeDtypeStruct((batch, *spec.input_shape), jnp.float32, sharding=bsh),
            "y": jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=bsh),
        }
        step = jax.jit(
            train_lib.build_train_step(stage, cfg, tx, seed=0, start=0, num_steps=1000),
            in_shardings=(state_sh, bsh),
            out_shardings=(state_sh, None),
            donate_argnums=(0,),
        )
        t0 = time.time()
        compiled = step.lower(state, batch_in).compile()
    return train_lib.compile_stats(compiled, time.time() - t0)


def main(argv: list[str] | None = None) -> None:
    """Compiles every requested variant and prints per-device memory and the ratios to data=8."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=32, help="global batch (divisible by 8)")
    p.add_argument("--tokens", type=int, default=128, help="target_seq_len of the embedder")
    p.add_argument("--length", type=int, default=512, help="input samples per example (1 chan)")
    p.add_argument("--variants", default="data8,fsdp8,2x4,fsdp8_remat,fsdp8_bf16")
    p.add_argument(
        "--body",
        default="roberta_large",
        choices=sorted(BODIES),
        help="roberta_large: 1D task [B, 1, length]; swin_large: 2D task [B, 3, 224, 224]",
    )
    args = p.parse_args(argv)
    if jax.device_count() != 8:
        raise SystemExit(f"needs 8 (fake) devices, found {jax.device_count()}")
    name = args.body.replace("_", "-")
    pre = abstract_body(BODIES[args.body], f"{name} (abstract)")
    n_body = sum(a.size for a in jax.tree.leaves(pre.params))
    if args.body == "swin_large":
        spec = xm.TaskSpec((3, 224, 224), "classification", NUM_CLASSES)
        task = "[B, 3, 224, 224] → 56×56 patch tokens"
    else:
        spec = xm.TaskSpec(
            (1, args.length), "classification", NUM_CLASSES, target_seq_len=args.tokens
        )
        task = f"[B, 1, {args.length}] → {args.tokens} tokens"
    gib = 2.0**30
    print(
        f"body {name} (abstract, {n_body / 1e6:.0f} M params) | task {task}, "
        f"{NUM_CLASSES} classes | global batch {args.batch} | 8 fake CPU "
        f"devices | AdamW, full fine-tuning | f32 params + 2 AdamW moments alone: "
        f"{3 * 4 * n_body / gib:.2f} GiB\n",
        flush=True,
    )
    header = (
        f"{'variant':>12} {'mesh d×f':>8} {'remat':>5} {'compute':>8} | {'args GiB':>8} "
        f"{'temp GiB':>8} {'peak GiB':>8} | {'peak / data8':>12} | {'compile s':>9}"
    )
    print(header)
    print("-" * len(header), flush=True)
    base = None
    for variant in args.variants.split(","):
        data, fsdp, remat, dtype = VARIANTS[variant]
        s = compile_variant(pre, spec, args.batch, variant)
        if variant == "data8":
            base = s["peak_bytes"]
        ratio = f"{s['peak_bytes'] / base:.3f}x" if base else "–"
        print(
            f"{variant:>12} {f'{data}×{fsdp}':>8} {remat:>5} {dtype:>8} | "
            f"{s['argument_bytes'] / gib:8.2f} {s['temp_bytes'] / gib:8.2f} "
            f"{s['peak_bytes'] / gib:8.2f} | {ratio:>12} | {s['compile_s']:9.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
