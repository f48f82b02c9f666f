"""Fine-tune step time: our jitted JAX step vs the PyTorch-eager reference, side by side.

What is measured, for the demo body (the shipped MiniLM-L6, ``xmodal_jax.load_pretrained()``) and
every (batch size, token count) pair:

- **JAX**: the project's real training step — ``train_lib.build_train_step`` over a
  ``finetune.task_loss_fn`` stage (embedder + body + head trained, AdamW lr 1e-4 wd 0.01),
  jitted with the state donated and rebound every step, as ``train_lib.train`` runs it. Its
  compile time (lower + compile) is measured once per shape and reported separately.
- **JAX, default embedder**: the same step with the project's default 1D target embedder
  (``Embed1DOptions()``: for these series shapes a shared patch projection without LayerNorm;
  for ``(1, T)`` also as a table, the per-feature tokenizer), to show what the default embedder
  costs: its step time relative to the ORCA-embedder step (goal: ≤ 5 % more).
- **PyTorch eager**, the way the ORCA / PaRe references run it: ``transformers.BertModel``
  (sdpa attention) loaded from the same folder, a ``Conv1d(C, 384, kernel = stride = s)`` →
  LayerNorm → learned-positions embedder, the BERT encoder on those tokens (all-ones attention
  mask), mean over tokens, ``Linear(384, 10)``, cross-entropy, ``backward()``,
  ``AdamW.step()``, ``zero_grad()``.

Token counts map to task inputs as follows: 8 tokens is the demo's shape, ``[B, 8, 8]`` (8
channels × 8 samples, stride 1); any other count ``T`` is one channel of ``T`` samples,
``[B, 1, T]`` (stride 1). Both frameworks see the same batch every step.

The machines are noisy, so measurements alternate: each round times ``--steps`` JAX steps and
``--steps`` torch steps (the order flips every round), after a warm-up of both; the table reports
the median over ``--rounds`` rounds of the mean step time. Shapes whose ``--steps`` steps would
take longer than ``--max_s`` seconds time fewer (at least 2), which keeps the default run under
three minutes on 2 cores. The speed-up is torch time / JAX time (> 1: JAX is faster); the
geometric mean over shapes closes the table. Also printed: each shape's JAX compile time, the
spread of the rounds ((max − min) / median) and the CPU cores each framework kept busy (CPU time /
wall time).

Run from the repository root::

    python bench/step_time.py                      # batch sizes 8, 32, 64 × tokens 8, 64
    python bench/step_time.py --batch_sizes 8,32 --tokens 8 --steps 5 --rounds 5
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

import xmodal_jax as xm  # noqa: E402
from xmodal_jax import config_lib, train_lib  # noqa: E402
from xmodal_jax.data.tasks import Task  # noqa: E402
from xmodal_jax.methods import finetune  # noqa: E402
from xmodal_jax.methods.base import Context, Stage  # noqa: E402
from xmodal_jax.models.embedders import conv1d_stride  # noqa: E402

NUM_CLASSES = 10
LR, WEIGHT_DECAY = 1e-4, 0.01
WARMUP_STEPS = 3


def input_shape(tokens: int) -> tuple[int, int]:
    """The per-example ``(C, L)`` giving ``tokens`` tokens: the demo's (8, 8), else (1, tokens)."""
    return (8, 8) if tokens == 8 else (1, tokens)


def target_seq_len(shape: tuple[int, int]) -> int:
    """The spec's ``target_seq_len``: the demo's 64, or ``L`` when longer (stride stays 1)."""
    return max(64, shape[1])


def make_batch(batch_size: int, shape: tuple[int, int], seed: int = 0) -> dict[str, np.ndarray]:
    """A random float32 ``x [B, C, L]`` and int32 labels ``y [B]`` in ``[0, NUM_CLASSES)``."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch_size, *shape)).astype(np.float32)
    y = rng.integers(0, NUM_CLASSES, batch_size).astype(np.int32)
    return {"x": x, "y": y}


# --- JAX: the project's own step ------------------------------------------------------------------


ORCA = xm.Embed1DOptions(kind="orca")  # the embedder the torch reference implements


class JaxRunner:
    """The project's jitted, donated fine-tune step for one input shape, with its state."""

    def __init__(
        self,
        pre: xm.Pretrained,
        shape: tuple[int, int],
        batch: dict[str, np.ndarray],
        embedder: xm.Embed1DOptions = ORCA,
        tabular: bool = False,
    ):
        tsl = target_seq_len(shape)
        spec = xm.TaskSpec(
            shape, "classification", NUM_CLASSES, target_seq_len=tsl, tabular=tabular
        )
        graphdef, params = xm.build_crossmodal(spec, pre, embedder=embedder)
        # Fresh buffers, as train_lib.setup's jitted init gives: built params alias pre.params and
        # each other (the embedder's LayerNorm is the source embedder's), and donation needs
        # every leaf to own its buffer.
        params = jax.tree.map(lambda a: jnp.array(a, copy=True), params)
        task = Task("bench", spec, loss="ce", metric="error", load=lambda: {})
        cfg = ml_collections.ConfigDict(
            {
                **config_lib.stage_defaults(),
                "optimizer": "adamw",
                "lr": LR,
                "weight_decay": WEIGHT_DECAY,
                "trainable": ("embedder", "body", "head"),
            }
        )
        run_cfg = ml_collections.ConfigDict({"seed": 0, "pos_weight": 1.0})
        ctx = Context(graphdef, task, pre, {"train": {}}, None, None, run_cfg)
        stage = Stage("finetune", tuple(cfg.trainable), {}, loss_fn=finetune.task_loss_fn(ctx))
        tx = train_lib.make_optimizer(cfg, params, 1000)
        self.state = train_lib.TrainState(
            jnp.zeros((), jnp.int32), params, jax.jit(tx.init)(params)
        )
        self.step_fn = jax.jit(
            train_lib.build_train_step(stage, cfg, tx, seed=0, start=0, num_steps=1000),
            donate_argnums=(0,),
        )
        self.batch = {k: jnp.asarray(v) for k, v in batch.items()}
        self.compiled: Callable[..., Any] | None = None

    def compile(self) -> float:
        """Lowers and compiles the step for this state and batch; returns the seconds it took."""
        t0 = time.perf_counter()
        self.compiled = self.step_fn.lower(self.state, self.batch).compile()
        return time.perf_counter() - t0

    def run(self, steps: int) -> None:
        """Runs ``steps`` steps (state donated and rebound) and waits for the last one."""
        assert self.compiled is not None, "compile() first"
        for _ in range(steps):
            self.state, metrics = self.compiled(self.state, self.batch)
        jax.block_until_ready((self.state, metrics))
        if not np.isfinite(float(metrics["loss"])):
            raise RuntimeError(f"JAX loss is {float(metrics['loss'])}")


# --- PyTorch eager: the reference implementations' step -------------------------------------------


class TorchRunner:
    """ORCA/PaRe-style eager step: Conv1d embedder → HF BERT encoder → mean → Linear → AdamW."""

    def __init__(self, path: str, shape: tuple[int, int], batch: dict[str, np.ndarray]):
        import torch
        import transformers
        from torch import nn

        self.torch = torch
        bert = transformers.BertModel.from_pretrained(path, attn_implementation="sdpa")
        bert.train()
        cfg = bert.config
        c_in, length = shape
        stride = conv1d_stride(length, target_seq_len(shape))  # the JAX embedder's rule
        tokens = length // stride
        dim = cfg.hidden_size

        class Model(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv1d(c_in, dim, kernel_size=stride, stride=stride)
                self.norm = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
                pos = bert.embeddings.position_embeddings.weight.detach()[:tokens].clone()
                self.position = nn.Parameter(pos)
                self.norm.load_state_dict(bert.embeddings.LayerNorm.state_dict())
                self.encoder = bert.encoder
                self.head = nn.Linear(dim, NUM_CLASSES)

            def forward(self, x, attention_mask):
                h = self.norm(self.conv(x).transpose(1, 2)) + self.position
                h = self.encoder(h, attention_mask=attention_mask).last_hidden_state
                return self.head(h.mean(dim=1))

        self.model = Model()
        self.model.train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
        self.x = torch.from_numpy(batch["x"])
        self.y = torch.from_numpy(batch["y"]).long()
        # BertModel's own mask path for an all-ones mask (None under sdpa: no masking needed).
        ones = torch.ones(self.x.shape[0], tokens, dtype=torch.long)
        if hasattr(bert, "_create_attention_masks"):
            h0 = torch.zeros(self.x.shape[0], tokens, dim)
            self.mask, _ = bert._create_attention_masks(
                attention_mask=ones,
                encoder_attention_mask=None,
                embedding_output=h0,
                encoder_hidden_states=None,
                cache=None,
            )
        else:
            self.mask = bert.get_extended_attention_mask(ones, ones.shape)

    def _step(self) -> Any:
        loss = self.torch.nn.functional.cross_entropy(self.model(self.x, self.mask), self.y)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad()
        return loss

    def run(self, steps: int) -> None:
        """Runs ``steps`` eager training steps."""
        for _ in range(steps):
            loss = self._step()
        if not math.isfinite(loss.item()):
            raise RuntimeError(f"torch loss is {loss.item()}")


# --- the benchmark --------------------------------------------------------------------------------


def timed(runner: JaxRunner | TorchRunner, steps: int) -> tuple[float, float]:
    """Runs ``steps`` steps of ``runner``; returns (wall seconds per step, CPU cores kept busy)."""
    wall, cpu = time.perf_counter(), time.process_time()
    runner.run(steps)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return wall / steps, cpu / wall


def measure(
    pre: xm.Pretrained, batch_size: int, tokens: int, steps: int, rounds: int, max_s: float
) -> dict[str, float]:
    """Compiles and warms up both frameworks for one shape, then alternates timed rounds.

    Each measurement runs ``steps`` steps, fewer (but at least 2) when that would take more than
    ``max_s`` seconds at the warm-up speed. Returns the JAX compile seconds, the steps used, and
    per framework the median over rounds of seconds per step, its spread (max − min) / median
    and the median CPU cores in use.
    """
    shape = input_shape(tokens)
    batch = make_batch(batch_size, shape)
    jx = JaxRunner(pre, shape, batch)
    compile_s = jx.compile()
    runners: dict[str, JaxRunner | TorchRunner] = {"jax": jx}
    runners["default"] = JaxRunner(pre, shape, batch, xm.Embed1DOptions())
    if shape[0] == 1:  # a (1, T) input read as a table: the per-feature tokenizer
        runners["table"] = JaxRunner(pre, shape, batch, xm.Embed1DOptions(), tabular=True)
    for name, runner in runners.items():
        if name != "jax":
            runner.compile()
    runners["torch"] = TorchRunner(pre.path, shape, batch)
    warm = 0.0  # the slowest runner's fastest timed warm-up step
    for runner in runners.values():
        runner.run(1)  # first call: allocations, lazy initialisation
        fastest = min(timed(runner, 1)[0] for _ in range(WARMUP_STEPS - 1))
        warm = max(warm, fastest)
    steps = max(2, min(steps, round(max_s / warm)))
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in runners}
    for r in range(rounds):
        order = list(runners.items())
        for name, runner in order if r % 2 == 0 else order[::-1]:
            times[name].append(timed(runner, steps))
    del jx, runners
    gc.collect()
    out = {"compile_s": compile_s, "steps": steps}
    for name, got in times.items():
        step_s = [t for t, _ in got]
        med = statistics.median(step_s)
        out[f"{name}_s"] = med
        out[f"{name}_spread"] = (max(step_s) - min(step_s)) / med
        out[f"{name}_cores"] = statistics.median(c for _, c in got)
    return out


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch_sizes", type=_ints, default=[8, 32, 64], help="e.g. 8,32,64")
    p.add_argument(
        "--tokens",
        "--seq",
        type=_ints,
        default=[8, 64],
        help="tokens per example, e.g. 8,64 (8 = the demo's [B, 8, 8]; T ≠ 8 = [B, 1, T])",
    )
    p.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per shape (median)")
    p.add_argument(
        "--max_s",
        type=float,
        default=3.0,
        help="cap on seconds per measurement: slow shapes time fewer steps (never under 2)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Measures every (tokens, batch size) pair and prints the table and the geometric mean."""
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    args = parse_args(argv)
    t_start = time.time()
    pre = xm.load_pretrained()
    print(
        f"body {pre.model_type} {os.path.basename(os.path.dirname(pre.path))} | jax "
        f"{jax.__version__} ({jax.default_backend()}, {jax.device_count()} device) | torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads) | transformers "
        f"{transformers.__version__} | {os.cpu_count()} CPUs | load average "
        # Other jobs on a shared machine skew the ratio (torch's OpenMP threads degrade far more
        # than XLA's under oversubscription), so the load is part of the result.
        f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}"
    )
    print(
        f"up to {args.steps} steps (≤ {args.max_s:g}s) × {args.rounds} alternating rounds per "
        f"shape, medians; {WARMUP_STEPS} warm-up steps each; AdamW lr {LR:g} wd {WEIGHT_DECAY:g}; "
        "speed-up = torch ms / JAX ms; spread = (max − min) / median over rounds; cores = CPU "
        "time / wall time\n",
        flush=True,
    )
    header = (
        f"{'tokens':>6} {'input':>10} | {'compile s':>9} | {'steps':>5} | {'JAX ms':>8} "
        f"{'torch ms':>9} | {'JAX tok/s':>9} {'torch tok/s':>11} | {'speed-up':>8} | "
        f"{'spread J/T':>10} | cores J/T | default emb. Δ | table emb. Δ"
    )
    print(header)
    print("-" * len(header), flush=True)
    ratios, deltas = [], []
    for tokens in args.tokens:
        for bs in args.batch_sizes:
            m = measure(pre, bs, tokens, args.steps, args.rounds, args.max_s)
            ratio = m["torch_s"] / m["jax_s"]
            ratios.append(ratio)
            c, length = input_shape(tokens)
            spread = f"{100 * m['jax_spread']:.0f}%/{100 * m['torch_spread']:.0f}%"
            # The default embedders' step time relative to the ORCA-embedder step (+ = slower).
            delta = {k: m[f"{k}_s"] / m["jax_s"] - 1 for k in ("default", "table") if f"{k}_s" in m}
            deltas.extend(delta.values())
            cells = [f"{100 * delta[k]:+.1f}%" if k in delta else "–" for k in ("default", "table")]
            print(
                f"{tokens:>6} {f'[{bs},{c},{length}]':>10} | {m['compile_s']:9.1f} | "
                f"{m['steps']:5d} | {1e3 * m['jax_s']:8.1f} {1e3 * m['torch_s']:9.1f} | "
                f"{bs * tokens / m['jax_s']:9.0f} {bs * tokens / m['torch_s']:11.0f} | "
                f"{ratio:7.2f}x | {spread:>10} | {m['jax_cores']:.1f}/{m['torch_cores']:.1f} | "
                f"{cells[0]:>14} | {cells[1]:>12}",
                flush=True,
            )
    gmean = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    print("-" * len(header))
    print(
        f"geometric-mean speed-up (torch time / JAX time): {gmean:.2f}x over {len(ratios)} shapes"
    )
    print(
        "default embedders vs ORCA's, step time: median "
        f"{100 * statistics.median(deltas):+.1f}%, max {100 * max(deltas):+.1f}% (goal ≤ +5 %)"
    )
    print(f"total runtime {time.time() - t_start:.0f}s")


if __name__ == "__main__":
    main()
