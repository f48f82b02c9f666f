"""One prepared accelerator check: real-size steps, method ratios, FLOPs, MFU and peak memory.

Written for a short GPU lend (``bench/device_check.sh``: ≤ 8 minutes on one H200, the image's own
CUDA jax, no package registry) and run on CPU in CI with ``--cpu-smoke`` (tiny sizes, same code).

For each body — a RoBERTa-base-shaped text transformer (12 × 768, 512 target tokens from a
``[B, 4, 1024]`` series through the default 1D embedder) and a Swin-base-shaped vision transformer
(embed 128, depths 2-2-18-2, 224 px, 3136 tokens), both randomly initialised — it builds the
project's own stages through their builders (``finetune.task_stage``, ``mona.mona_stage``,
``pare.pare_stage``) on a synthetic :class:`~xmodal_jax.methods.base.Context`, and the trainer's
jitted, donated step (``train.step.build_train_step``, AdamW) for each variant:

- ``ft_f32_remat``: fine-tune, float32, per-block remat (``body.remat="full"``);
- ``ft_f32``: fine-tune, float32 — the reference every ratio is taken against;
- ``ft_bf16``: fine-tune, bfloat16 compute (float32 master weights);
- ``pare``: PaRe phase A (relaxed Gumbel top-k), float32;
- ``mona``: the exact second-order MoNA meta-step (embedder + head), float32.

Printed and written to ``--out`` (``device_check.json``, ``device_check.md``): compile seconds,
step ms (median over alternating rounds), target tokens/s, XLA FLOPs per step
(``cost_analysis``), achieved TFLOP/s and MFU against (a) the device's datasheet peak where the
device is known and (b) a dense matmul of the same dtype timed in the same run (8192³ on a GPU,
2048³ on CPU), each variant's step time over ``ft_f32``'s from the same rounds, XLA's compiled
memory estimate, and the device's measured peak (``memory_stats()["peak_bytes_in_use"]``) for
``ft_f32_remat`` and ``ft_f32``. The peak counter cannot be reset, so each body runs in its own
process and those two variants run first (remat first, its buffers freed before the second).

Variants that would start after ``--budget_s`` seconds are skipped and listed as such, so the
check always finishes inside one lend. The process imports none of jraph, grain, tfds, ott-jax,
aeon, vaderSentiment or tensorboardX (they are not on the lent machine); it checks that at the end.

    bench/device_check.sh                 # on the GPU host (writes under $OUT)
    python bench/device_check.py --cpu-smoke --out /tmp/dc
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

import xmodal_jax as xm  # noqa: E402
from xmodal_jax import config_lib  # noqa: E402
from xmodal_jax.data.tasks import Task  # noqa: E402
from xmodal_jax.methods import finetune, mona, pare  # noqa: E402
from xmodal_jax.methods.base import Context, Stage  # noqa: E402
from xmodal_jax.models import crossmodal, layers, pretrained  # noqa: E402
from xmodal_jax.train.optim import TrainState, make_optimizer  # noqa: E402
from xmodal_jax.train.step import build_train_step, compile_stats  # noqa: E402

# Not installed on the lent accelerator host; the step path must never import them.
ABSENT_ON_DEVICE = (
    "jraph",
    "grain",
    "tensorflow_datasets",
    "ott",
    "aeon",
    "vaderSentiment",
    "tensorboardX",
)
MiB = 2**20

# config.json fields of roberta-base and swin-base (patch 4, window 7, 224 px).
ROBERTA_BASE = {
    "model_type": "roberta",
    "vocab_size": 50265,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "max_position_embeddings": 514,
    "type_vocab_size": 1,
    "layer_norm_eps": 1e-5,
    "pad_token_id": 1,
}
SWIN_BASE = {
    "model_type": "swin",
    "image_size": 224,
    "patch_size": 4,
    "num_channels": 3,
    "embed_dim": 128,
    "depths": [2, 2, 18, 2],
    "num_heads": [4, 8, 16, 32],
    "window_size": 7,
}


@dataclasses.dataclass(frozen=True)
class BodyCase:
    """One body and the task it is benchmarked on."""

    raw: dict  # the config.json fields
    input_shape: tuple[int, ...]  # per example: (C, L) or (C, H, W)
    target_seq_len: int
    num_classes: int
    source_len: int  # text source: tokens per sentence (vision sources are images)
    source_classes: int
    batch: int


CASES = {
    "roberta_base": BodyCase(ROBERTA_BASE, (4, 1024), 512, 10, 128, 4, 32),
    "swin_base": BodyCase(SWIN_BASE, (3, 224, 224), 0, 100, 0, 10, 32),
}
SMOKE = {
    "roberta_base": BodyCase(
        {
            **ROBERTA_BASE,
            "vocab_size": 64,
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "max_position_embeddings": 40,
        },
        (4, 64),
        16,
        10,
        8,
        4,
        4,
    ),
    "swin_base": BodyCase(
        {
            **SWIN_BASE,
            "image_size": 32,
            "embed_dim": 8,
            "depths": [1, 1],
            "num_heads": [1, 2],
            "window_size": 4,
        },
        (3, 32, 32),
        0,
        10,
        0,
        4,
        2,
    ),
}
VARIANTS = ("ft_f32_remat", "ft_f32", "ft_bf16", "pare", "mona")
BASELINE = "ft_f32"
# Dense peak TFLOP/s from the vendors' datasheets (SXM parts), by a substring of device_kind.
# f32 matmuls run on TF32 tensor cores under XLA's default precision on these GPUs.
DATASHEET_TFLOPS = {
    "H200": {"bfloat16": 989.0, "float32": 494.7},
    "H100": {"bfloat16": 989.0, "float32": 494.7},
    "A100": {"bfloat16": 312.0, "float32": 156.0},
}


def random_body(raw: dict, seed: int = 0) -> xm.Pretrained:
    """A :class:`~xmodal_jax.Pretrained` of ``raw``'s architecture with random (HF-style) init."""
    arch = pretrained.ARCHITECTURES[raw["model_type"]]
    config = arch.resolve("config_cls").from_hf(raw, raw["model_type"])
    graphdef, shapes = pretrained.split(nnx.eval_shape(lambda: pretrained.build(arch, config)))
    name = f"random {raw['model_type']}"
    pre = xm.Pretrained(name, raw["model_type"], arch.modality, config, graphdef, shapes)
    return dataclasses.replace(pre, params=pre.random_params(seed))


def _balanced_labels(n: int, classes: int) -> np.ndarray:
    # Round-robin classes, so every batch slice from row 0 holds same-class pairs (MoNA's L_out).
    return (np.arange(n) % classes).astype(np.int32)


def synthetic_data(case: BodyCase, pre: xm.Pretrained, seed: int = 0) -> tuple[dict, dict]:
    """Random target ``{"x", "y"}`` and source arrays (text ids or images), 4 batches each."""
    rng = np.random.default_rng(seed)
    n = 4 * case.batch
    target = {
        "x": rng.standard_normal((n, *case.input_shape)).astype(np.float32),
        "y": rng.integers(0, case.num_classes, n).astype(np.int32),
    }
    y_src = _balanced_labels(n, case.source_classes)
    if pre.modality == "text":
        vocab = int(pre.config.vocab_size)
        source = {
            "input_ids": rng.integers(3, vocab, (n, case.source_len)).astype(np.int32),
            "attention_mask": np.ones((n, case.source_len), np.int32),
            "y": y_src,
        }
    else:
        side = int(case.raw["image_size"])
        source = {"pixel_values": rng.uniform(size=(n, 3, side, side)).astype(np.float32)}
        source["y"] = y_src
    return target, source


def stage_config(**kw: Any) -> ml_collections.ConfigDict:
    """The stage keys' defaults (every method's), AdamW lr 1e-4 wd 0.01, overridden by ``kw``."""
    cfg = config_lib.stage_defaults()
    cfg.update(optimizer="adamw", lr=1e-4, weight_decay=0.01, steps=1000, **kw)
    return ml_collections.ConfigDict(cfg)


class Runner:
    """One variant: its stage, the trainer's jitted donated step, state and one fixed batch."""

    def __init__(self, name: str, stage: Stage, cfg: Any, params: dict, batch: int):
        self.name = name
        tx = make_optimizer(cfg, params, 1000)
        params = jax.tree.map(lambda a: jnp.array(a, copy=True), params)  # donation-safe
        self.state = TrainState(jnp.zeros((), jnp.int32), params, jax.jit(tx.init)(params))
        self.step = jax.jit(build_train_step(stage, cfg, tx, 0, 0, 1000), donate_argnums=(0,))
        self.batch = {
            prefix + k: jnp.asarray(v[:batch])
            for prefix, arrays in stage.datasets.items()
            for k, v in arrays.items()
        }
        self.compiled: Callable[..., Any] | None = None
        self.stats: dict[str, float] = {}

    def compile(self) -> None:
        """Lowers and compiles the step; keeps XLA's FLOPs / memory statistics."""
        t0 = time.perf_counter()
        self.compiled = self.step.lower(self.state, self.batch).compile()
        self.stats = compile_stats(self.compiled, time.perf_counter() - t0)

    def run(self, steps: int) -> float:
        """Runs ``steps`` steps, waits for the last; returns wall seconds per step."""
        assert self.compiled is not None, "compile() first"
        t0 = time.perf_counter()
        for _ in range(steps):
            self.state, metrics = self.compiled(self.state, self.batch)
        jax.block_until_ready((self.state, metrics))
        seconds = (time.perf_counter() - t0) / steps
        if not np.isfinite(float(metrics["loss"])):
            raise RuntimeError(f"{self.name}: loss is {float(metrics['loss'])}")
        return seconds


def build_runner(variant: str, case: BodyCase, pre: xm.Pretrained, data: tuple[dict, dict]):
    """The :class:`Runner` of one variant, built through the method's own stage builder."""
    target, source = data
    spec = xm.TaskSpec(
        case.input_shape, "classification", case.num_classes, target_seq_len=case.target_seq_len
    )
    graphdef, params = xm.build_crossmodal(spec, pre)
    if variant.endswith("_remat"):
        graphdef = layers.with_remat(graphdef, params, "full")
    if variant.endswith("_bf16"):
        graphdef = crossmodal.with_compute_dtype(graphdef, params, "bfloat16")
    task = Task("device_check", spec, loss="ce", metric="error", load=lambda: {})
    run_cfg = ml_collections.ConfigDict(
        {"seed": 0, "pos_weight": 1.0, "data": {"batch_size": case.batch}}
    )
    ctx = Context(graphdef, task, pre, {"train": target}, source, None, run_cfg)
    if variant == "mona":
        cfg = stage_config(kind="mona", trainable=("embedder", "head"), meta_grad="exact")
        stage = mona.mona_stage(variant, cfg, ctx)
    elif variant == "pare":
        groups = ("embedder", "body", "head", *pare.GROUPS)
        cfg = stage_config(kind="pare", trainable=groups)
        params = {**params, **pare.init_params(variant, cfg, ctx, jax.random.key(1))}
        stage = pare.pare_stage(variant, cfg, ctx)
    else:
        cfg = stage_config(kind="task", trainable=("embedder", "body", "head"))
        stage = finetune.task_stage(variant, cfg, ctx)
    return Runner(variant, stage, cfg, params, case.batch)


def tokens_per_example(case: BodyCase) -> int:
    """Target tokens the body sees per example (the embedder's output length)."""
    if case.target_seq_len:
        return case.target_seq_len
    side = int(case.raw["image_size"]) // int(case.raw["patch_size"])
    return side * side


def matmul_tflops(dtype: str, n: int, reps: int = 5) -> float:
    """TFLOP/s of an ``n³`` matmul in ``dtype`` on the default device (after one warm-up)."""
    key = jax.random.key(0)
    a = jax.random.normal(key, (n, n), jnp.dtype(dtype))
    b = jax.random.normal(jax.random.fold_in(key, 1), (n, n), jnp.dtype(dtype))
    mm = jax.jit(jnp.matmul)
    jax.block_until_ready(mm(a, b))
    t0 = time.perf_counter()
    for _ in range(reps):
        out = mm(a, b)
    jax.block_until_ready(out)
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def peak_bytes() -> float | None:
    """The device's peak bytes in use so far (``memory_stats``), or None where not reported."""
    stats = jax.local_devices()[0].memory_stats() or {}
    value = stats.get("peak_bytes_in_use")
    return float(value) if value is not None else None


def datasheet_peak(dtype: str) -> float | None:
    """The datasheet dense TFLOP/s of this device for ``dtype``, if the device is in the table."""
    kind = jax.local_devices()[0].device_kind
    for name, peaks in DATASHEET_TFLOPS.items():
        if name in kind:
            return peaks[dtype]
    return None


def check_body(name: str, args: argparse.Namespace, t_start: float) -> dict[str, Any]:
    """Every variant of one body: the memory probes first, then alternating timed rounds."""
    case = (SMOKE if args.cpu_smoke else CASES)[name]
    pre = random_body(case.raw)
    data = synthetic_data(case, pre)
    tokens = case.batch * tokens_per_example(case)
    out: dict[str, Any] = {"body": name, "batch": case.batch, "tokens_per_step": tokens}
    rows: dict[str, dict[str, Any]] = {}
    runners: dict[str, Runner] = {}
    skipped = []
    for variant in args.variants:
        if time.time() - t_start > args.budget_s:
            skipped.append(variant)
            continue
        runner = build_runner(variant, case, pre, data)
        runner.compile()
        for _ in range(2):  # warm-up: first-call allocations
            runner.run(1)
        row = dict(runner.stats)  # compile_s, flops and XLA's memory fields
        if variant in ("ft_f32_remat", BASELINE):
            row["device_peak_bytes"] = peak_bytes()
        print(f"  {name}/{variant}: compiled in {row['compile_s']:.1f}s", flush=True)
        rows[variant] = row
        if variant == "ft_f32_remat":  # one timed round, then freed before the baseline
            row["step_s_rounds"] = [runner.run(args.steps)]
            del runner
            gc.collect()
        else:
            runners[variant] = runner
    timed = {v: rows[v].setdefault("step_s_rounds", []) for v in runners}
    ratios: dict[str, list[float]] = {v: [] for v in runners}
    for r in range(args.rounds):
        order = list(runners) if r % 2 == 0 else list(runners)[::-1]
        got = {v: runners[v].run(args.steps) for v in order}
        for v, s in got.items():
            timed[v].append(s)
            if BASELINE in got:
                ratios[v].append(s / got[BASELINE])
    for v, row in rows.items():
        row["step_s"] = statistics.median(row["step_s_rounds"])
        row["tokens_per_s"] = tokens / row["step_s"]
        row["achieved_tflops"] = row["flops"] / row["step_s"] / 1e12
        if ratios.get(v):
            row["ratio_to_ft_f32"] = statistics.median(ratios[v])
        elif BASELINE in rows:  # the remat probe ran alone: compared with the baseline's median
            row["ratio_to_ft_f32"] = row["step_s"] / statistics.median(
                rows[BASELINE]["step_s_rounds"]
            )
    out["variants"] = rows
    out["skipped"] = skipped
    return out


def run_body_subprocess(name: str, args: argparse.Namespace, budget_s: float) -> dict[str, Any]:
    """Runs ``check_body`` for one body in a fresh process (a fresh peak-memory counter)."""
    path = os.path.join(args.out, f"{name}.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--body", name, "--out", args.out]
    cmd += ["--steps", str(args.steps), "--rounds", str(args.rounds)]
    cmd += ["--variants", ",".join(args.variants)]
    cmd += ["--budget_s", f"{max(budget_s, 0.0):.0f}"] + (["--cpu-smoke"] if args.cpu_smoke else [])
    proc = subprocess.run(cmd, check=False)
    if proc.returncode != 0 or not os.path.exists(path):
        return {"body": name, "error": f"exit {proc.returncode}", "variants": {}, "skipped": []}
    with open(path) as f:
        return json.load(f)


def table(results: list[dict[str, Any]], env: dict[str, Any]) -> list[str]:
    """The markdown report: one row per (body, variant)."""
    lines = [
        f"device: {env['device_kind']} ({env['backend']}), jax {env['jax']}; measured dense "
        f"matmul {env['matmul_n']}³: f32 {env['matmul_tflops']['float32']:.2f} TFLOP/s, bf16 "
        f"{env['matmul_tflops']['bfloat16']:.2f} TFLOP/s; {env['steps']} steps × {env['rounds']} "
        "alternating rounds (medians)",
        "",
        "| body | variant | compile s | step ms | tokens/s | TFLOP/step | TFLOP/s | MFU (datasheet)"
        " | MFU (measured matmul) | × ft_f32 | XLA peak MiB | device peak MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        if res.get("error"):
            lines.append(f"| {res['body']} | failed: {res['error']} |")
        for v, row in res["variants"].items():
            dtype = "bfloat16" if v.endswith("bf16") else "float32"
            sheet = env["datasheet_tflops"].get(dtype)
            mfu_sheet = f"{row['achieved_tflops'] / sheet:.1%}" if sheet else "–"
            mfu_meas = row["achieved_tflops"] / env["matmul_tflops"][dtype]
            dev = row.get("device_peak_bytes")
            dev_cell = f"{dev / MiB:.0f}" if dev is not None else "–"
            lines.append(
                f"| {res['body']} | {v} | {row['compile_s']:.1f} | {1e3 * row['step_s']:.2f} | "
                f"{row['tokens_per_s']:.0f} | {row['flops'] / 1e12:.4g} | "
                f"{row['achieved_tflops']:.4g} | {mfu_sheet} | {mfu_meas:.1%} | "
                f"{row.get('ratio_to_ft_f32', float('nan')):.2f} | "
                f"{row['peak_bytes'] / MiB:.0f} | {dev_cell} |"
            )
        if res.get("skipped"):
            lines.append(f"| {res['body']} | skipped (time budget): {', '.join(res['skipped'])} |")
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu-smoke", action="store_true", help="tiny sizes (CI, any CPU)")
    p.add_argument("--body", choices=("all", *CASES), default="all")
    p.add_argument("--out", default=os.environ.get("OUT", "runs/device_check"))
    p.add_argument("--steps", type=int, default=None, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--budget_s", type=float, default=420.0, help="start no variant after this")
    p.add_argument(
        "--variants",
        type=lambda text: tuple(v for v in text.split(",") if v),
        default=VARIANTS,
        help=f"comma-separated subset of {','.join(VARIANTS)} (in this order; {BASELINE} is "
        "the reference of the ratios)",
    )
    args = p.parse_args(argv)
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        p.error(f"--variants: unknown {unknown}; expected a subset of {list(VARIANTS)}")
    args.variants = tuple(v for v in VARIANTS if v in args.variants)
    if args.steps is None:
        args.steps = 2 if args.cpu_smoke else 10
    return args


def main(argv: list[str] | None = None) -> int:
    """Runs every body (each in its own process), prints and writes the report."""
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    t_start = time.time()
    if args.body != "all":
        res = check_body(args.body, args, t_start)
        with open(os.path.join(args.out, f"{args.body}.json"), "w") as f:
            json.dump(res, f, indent=1)
        return check_imports()
    dev = jax.local_devices()[0]
    print(f"device {dev.device_kind} ({jax.default_backend()}), jax {jax.__version__}", flush=True)
    n = 2048 if jax.default_backend() == "cpu" or args.cpu_smoke else 8192
    env = {
        "device_kind": dev.device_kind,
        "backend": jax.default_backend(),
        "jax": jax.__version__,
        "matmul_n": n,
        "matmul_tflops": {d: matmul_tflops(d, n) for d in ("float32", "bfloat16")},
        "datasheet_tflops": {
            d: peak for d in ("float32", "bfloat16") if (peak := datasheet_peak(d)) is not None
        },
        "steps": args.steps,
        "rounds": args.rounds,
        "load_average": os.getloadavg(),
    }
    results = []
    for name in CASES:
        print(f"{name}:", flush=True)
        results.append(run_body_subprocess(name, args, args.budget_s - (time.time() - t_start)))
    lines = table(results, env)
    lines.append(f"\ntotal {time.time() - t_start:.0f}s")
    print("\n".join(lines), flush=True)
    with open(os.path.join(args.out, "device_check.json"), "w") as f:
        json.dump({"env": env, "results": results}, f, indent=1)
    with open(os.path.join(args.out, "device_check.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    failed = [r["body"] for r in results if r.get("error")]
    if failed:
        print(f"failed bodies: {failed}", file=sys.stderr)
        return 1
    return check_imports()


def check_imports() -> int:
    """1 (with the names) if this process imported a package the lent device does not have."""
    bad = [m for m in ABSENT_ON_DEVICE if m in sys.modules]
    if bad:
        print(f"imported packages absent on the device host: {bad}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
