"""``xmodal-make-pde --task darcy --n 256 --res 64 --out DIR [--seed 0]``.

Solves ``n`` samples of a PDEBench equation with :mod:`xmodal_jax.data.pde_solvers` and writes
them in PDEBench's file layout under PDEBench's file name in ``DIR``, where
``xmodal_jax.data.pdebench.read_pdebench(DIR, task)`` reads them. Tasks: advection, burgers,
reaction_diffusion_1d, darcy_pdebench (alias darcy).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from xmodal_jax.data import pde_solvers


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point; ``argv`` defaults to the command line."""
    tasks = sorted([*pde_solvers.FILE_NAMES, *pde_solvers.ALIASES])
    parser = argparse.ArgumentParser(
        prog="xmodal-make-pde",
        description="Solve a PDEBench equation; write its HDF5 file in PDEBench's layout.",
    )
    parser.add_argument("--task", required=True, choices=tasks)
    parser.add_argument("--n", type=int, required=True, help="number of samples")
    parser.add_argument("--res", type=int, required=True, help="cells per spatial axis")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing file of that name in --out"
    )
    args = parser.parse_args(argv)
    start = time.time()
    try:
        path = pde_solvers.write_dataset(
            args.task, args.n, args.res, args.out, seed=args.seed, overwrite=args.overwrite
        )
    except (ValueError, FileExistsError) as e:
        parser.error(str(e))
    print(f"wrote {path} ({args.n} samples, {time.time() - start:.1f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
