"""Registry → config → trainer on format-faithful task files (tiny bodies, a few steps)."""

from __future__ import annotations

import numpy as np
import pytest

from configs import nb360 as nb360_config
from tests import test_nb360 as files
from xmodal_jax import config_lib, train_lib
from xmodal_jax.data import tasks


def _config(arg, body, steps=4, **task):
    c = nb360_config.get_config(arg)
    c.unlock()
    c.body.path = body
    c.task.update(task)
    c.data.batch_size = 8
    c.data.eval_batch_size = 16
    c.log_every = 2
    c.eval_every = steps
    for name in config_lib.stage_names(c):
        c.stages[name].steps = steps
        c.stages[name].accum = 1
    return c


def test_registry_lists_every_spec_task():
    for name in ("cifar100", "spherical", "darcy", "ninapro", "ecg", "satellite", "deepsea"):
        assert name in tasks.names()
    with pytest.raises(ValueError, match="config.task.name='nope' unknown"):
        tasks.get(type("C", (), {"name": "nope"})())


def test_satellite_orca_run(tmp_path, tiny_bert_path):
    files._write_satellite(str(tmp_path), n_train=96, n_test=24)
    cfg = _config(f"task=satellite,method=orca,data_dir={tmp_path}", tiny_bert_path)
    cfg.source.max_examples = 64
    res = train_lib.train(cfg, str(tmp_path / "run"), verbose=False)
    assert 0 <= res["test_best"] <= 100 and res["metric"] == "error"


def test_ninapro_on_a_swin_body(tmp_path, tiny_swin_path):
    files._write_ninapro(str(tmp_path), sizes=(32, 16, 16))
    cfg = _config(f"task=ninapro,method=finetune,data_dir={tmp_path}", tiny_swin_path)
    res = train_lib.train(cfg, str(tmp_path / "run"), verbose=False)
    assert 0 <= res["test_last"] <= 100


def test_darcy_dense_with_target_normaliser(tmp_path, tiny_swin_path):
    files._write_mat(
        str(tmp_path / "piececonst_r421_N1024_smooth1.mat"), files._darcy_fields(20, 0), v73=False
    )
    files._write_mat(
        str(tmp_path / "piececonst_r421_N1024_smooth2.mat"), files._darcy_fields(8, 1), v73=False
    )
    cfg = _config(
        f"task=darcy,method=finetune,data_dir={tmp_path}",
        tiny_swin_path,
        ntrain=16,
        nval=4,
        ntest=8,
    )
    run = train_lib.setup(cfg)
    y = np.asarray(run.splits["train"]["y"])
    # Decoding a zero output gives the per-position train mean: outputs live in task units.
    np.testing.assert_allclose(
        np.asarray(run.ctx.decode(np.zeros_like(y[:1]))),
        y.mean(0, keepdims=True),
        rtol=1e-4,
        atol=1e-4,
    )
    res = train_lib.train(cfg, str(tmp_path / "run"), verbose=False)
    assert np.isfinite(res["test_last"]) and res["metric"] == "relative_l2"


def _offline(config_module, arg, body, steps=4):
    c = config_module.get_config(arg)
    c.unlock()
    c.body.path = body
    c.data.batch_size = 8
    c.source.max_examples = 64
    c.log_every = 2
    c.eval_every = steps
    for name in config_lib.stage_names(c):
        # `steps` steps in every stage (not a shared total), whatever the recipe's budget.
        c.stages[name].update(dict(steps=steps, min_steps=0, includes_previous=False))
    return c


def test_pde_solver_files_train_end_to_end(tmp_path, tiny_bert_path):
    from configs import pdebench as pde_config
    from xmodal_jax.data import pde_solvers

    pde_solvers.write_dataset("advection", 40, 64, str(tmp_path), seed=0)
    cfg = _offline(pde_config, f"pde=advection,data_dir={tmp_path},tsl=16", tiny_bert_path)
    res = train_lib.train(cfg, str(tmp_path / "run"), verbose=False)
    assert res["metric"] == "nrmse" and np.isfinite(res["test_best"])


def test_ucr_gunpoint_trains_end_to_end(tmp_path, tiny_bert_path):
    from configs import ucr

    cfg = _offline(ucr, "name=GunPoint,tsl=30", tiny_bert_path)
    res = train_lib.train(cfg, str(tmp_path / "run"), verbose=False)
    assert res["task"] == "ucr/GunPoint" and 0 <= res["test_best"] <= 100


def test_tabular_tables_train_end_to_end(tmp_path, tiny_bert_path):
    from configs import tabular

    cfg = _offline(tabular, "name=iris,method=finetune", tiny_bert_path)
    res = train_lib.train(cfg, str(tmp_path / "iris"), verbose=False)
    assert res["task"] == "tabular/iris" and 0 <= res["test_best"] <= 100
    cfg = _offline(tabular, "name=diabetes,method=finetune", tiny_bert_path)
    run = train_lib.setup(cfg)
    assert run.task.spec.output == "regression" and run.task.normalize_targets


def test_deepsea_multilabel_auroc(tmp_path, tiny_bert_path):
    np.savez(tmp_path / "deepsea_filtered.npz", **files._deepsea_arrays(sizes=(32, 16, 16)))
    cfg = _config(
        f"task=deepsea,method=orca,data_dir={tmp_path}", tiny_bert_path, target_seq_len=40
    )
    cfg.source.max_examples = 64
    res = train_lib.train(cfg, str(tmp_path / "run"), verbose=False)
    assert res["metric"] == "auroc_error" and 0 <= res["test_last"] <= 1


@pytest.mark.parametrize(
    "pde,extra", [("burgers", ""), ("reaction_diffusion_1d", ""), ("darcy_pdebench", ",flatten")]
)
def test_every_solver_dataset_trains(tmp_path, tiny_bert_path, pde, extra):
    from configs import pdebench as pde_config
    from xmodal_jax.data import pde_solvers

    res_x = 16 if pde == "darcy_pdebench" else 64
    pde_solvers.write_dataset(pde, 24, res_x, str(tmp_path), seed=0)
    cfg = _offline(
        pde_config, f"pde={pde},data_dir={tmp_path},tsl=64,method=finetune{extra}", tiny_bert_path
    )
    res = train_lib.train(cfg, str(tmp_path / "run"), verbose=False)
    assert np.isfinite(res["test_last"])


def test_digits_demo_config_trains(tmp_path, tiny_bert_path):
    from configs import demo

    cfg = _offline(demo, "train_limit=200", tiny_bert_path)
    res = train_lib.train(cfg, str(tmp_path / "run"), verbose=False)
    assert res["task"] == "digits" and 0 <= res["test_best"] <= 100
