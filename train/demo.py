"""Frozen-feature cross-modal demo: MiniLM text body on handwritten digits (a 1D signal here).

Runs until the trainer lands (issue "Training system"): builds a CrossModalModel for the
scikit-learn digits (each 8×8 image read row by row as a 1-channel signal of length 64), embeds
every image with the ORCA 1D embedder, passes the tokens through the *pretrained* MiniLM body and
through the same body with *random* weights, and fits a logistic-regression probe on each set of
mean-pooled features. The gap between the two test accuracies is what the pretrained body brings.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np


def _features(graphdef, params, x: np.ndarray, batch: int) -> np.ndarray:
    from xmodal_jax.models.crossmodal import apply
    from xmodal_jax.models.heads import masked_mean

    fn = jax.jit(lambda p, xb: masked_mean(apply(graphdef, p, xb, method="features"), None))
    pad = (-len(x)) % batch  # static shapes: pad the last batch, drop the padding afterwards
    xp = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
    out = [np.asarray(fn(params, jnp.asarray(xp[i : i + batch]))) for i in range(0, len(xp), batch)]
    return np.concatenate(out)[: len(x)]


def main(argv: list[str] | None = None) -> None:
    """Runs the demo and prints pretrained-body vs random-body probe accuracy."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--body", default=None, help="local HF folder (default: shipped MiniLM)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args(argv)

    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    import xmodal_jax as xm

    t0 = time.time()
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32).reshape(-1, 1, 64)
    y = digits.target
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=0.3, stratify=y, random_state=args.seed
    )
    pre = xm.load_pretrained(args.body)
    print(f"body: {pre.model_type} from {pre.path}")
    task = xm.TaskSpec((1, 64), "classification", 10, target_seq_len=64)
    results = {}
    for name, body in (("pretrained", None), ("random", pre.random_params(args.seed))):
        graphdef, params = xm.build_crossmodal(task, pre, body_params=body, seed=args.seed)
        f_tr = _features(graphdef, params, x_tr, args.batch)
        f_te = _features(graphdef, params, x_te, args.batch)
        scaler = StandardScaler().fit(f_tr)
        probe = LogisticRegression(max_iter=2000).fit(scaler.transform(f_tr), y_tr)
        results[name] = probe.score(scaler.transform(f_te), y_te)
        print(f"{name:>10} body: linear-probe test accuracy {results[name]:.4f}")
    print(
        f"digits ({len(x_tr)} train / {len(x_te)} test), frozen features, "
        f"pretrained − random = {results['pretrained'] - results['random']:+.4f} "
        f"({time.time() - t0:.1f}s)"
    )


if __name__ == "__main__":
    main()
