"""PDEBench tasks from the original HDF5 files, or from files written by ``xmodal-make-pde``.

``xmodal-make-pde --task advection --n 256 --res 256 --out data/pde``
``xmodal-train --config configs/pdebench.py:pde=advection,data_dir=data/pde --workdir runs/adv``

Args: ``pde`` (advection | burgers | diffusion_sorption | reaction_diffusion_1d | cfd_1d |
darcy_pdebench | shallow_water | reaction_diffusion_2d | cfd_2d), ``data_dir``, ``body`` (1D:
default the shipped MiniLM; 2D: a ViT/Swin folder, or ``flatten`` to treat fields as C×(H·W)
signals on a text body), ``tsl``, ``method`` (orca | mona | finetune), ``epochs``, ``batch``,
``lr``, ``seed``.
"""

from __future__ import annotations

from configs.common import offline_recipe, parse_arg
from xmodal_jax import config_lib


def get_config(arg: str | None = None):
    """ORCA on one PDE: x = state at t=0, y = state at t_train−1, nRMSE (lower is better)."""
    a = parse_arg(
        arg,
        pde="advection",
        data_dir="",
        body="",
        tsl=128,
        flatten=False,
        method="orca",
        epochs=20.0,
        batch=8,
        lr=1e-4,
        seed=0,
        align_steps=40,
    )
    c = config_lib.base_config()
    c.seed = a.seed
    c.body.path = a.body
    c.task.update(
        dict(
            name="pdebench", pde=a.pde, data_dir=a.data_dir, target_seq_len=a.tsl, flatten=a.flatten
        )
    )
    c.data.update(dict(batch_size=a.batch, eval_batch_size=32, val_size=0.1, prefetch=2))
    offline_recipe(c, a.method, epochs=a.epochs, align_steps=a.align_steps, lr=a.lr)
    c.log_every = 10
    c.lock()
    return c
