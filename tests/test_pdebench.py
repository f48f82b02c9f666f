"""PDEBench: solvers solve their PDEs; their files and hand-made ones read back as the reference."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from train import make_pde
from xmodal_jax.data import pde_solvers as ps
from xmodal_jax.data.formats import DataFormatError, LazyArray
from xmodal_jax.data.pdebench import PDE_TASKS, read_pdebench, split_indices

# ---------------------------------------------------------------------------------------------
# (a) the solvers


def _smooth_ic(n: int, seed: int) -> ps.SineInitialCondition:
    return ps.SineInitialCondition(n, np.random.default_rng(seed), p_abs=0.0, p_window=0.0)


def test_advection_is_the_exact_shift():
    ic = ps.SineInitialCondition(16, np.random.default_rng(0), p_abs=0.5, p_window=0.5)
    res, beta = 50, 0.4
    x = ps.cell_centres(res)
    # β·t a whole number of cells: the solution is the rolled initial grid, kinks and windows too
    t = np.array([0.0, 0.05, 0.25, 2.5])  # shifts of 1, 5 cells and one full period
    u = ps.solve_advection(ic, beta, x, t)
    u0 = ic(x)
    for j, shift in enumerate([0, 1, 5, 0]):
        np.testing.assert_allclose(u[:, j], np.roll(u0, shift, axis=-1), atol=1e-12)
    # grid input (Fourier shift) agrees with the exact function for band-limited data
    smooth = _smooth_ic(8, 1)
    tt = np.linspace(0, 2, 7)
    np.testing.assert_allclose(
        ps.solve_advection(smooth(x), beta, x, tt),
        ps.solve_advection(smooth, beta, x, tt),
        atol=1e-12,
    )


def test_advection_residual_converges():
    """Central-difference residual of u_t + β u_x falls as h² on the exact solution."""
    ic, beta = _smooth_ic(8, 2), 0.4
    resid = []
    for res in (64, 128):
        x, h = ps.cell_centres(res), 1.0 / res
        u = ps.solve_advection(ic, beta, x, np.arange(0, 0.5, h))
        ut = (u[:, 2:] - u[:, :-2]) / (2 * h)
        ux = (np.roll(u, -1, -1) - np.roll(u, 1, -1))[:, 1:-1] / (2 * h)
        resid.append(np.abs(ut + beta * ux).max() / np.abs(beta * ux).max())
    assert resid[1] < 1e-2 and resid[0] / resid[1] > 3.8, resid  # measured 2.1e-2, 5.1e-3


def _cole_hopf(ic: ps.SineInitialCondition, nu: float, x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Exact viscous Burgers u_t + (u²/2)_x = (ν/π) u_xx (Cole–Hopf; heat equation in Fourier)."""
    eps, fine = nu / np.pi, 2048
    u0 = ic(np.arange(fine) / fine)
    c = u0.mean(axis=1, keepdims=True)  # Galilean frame moving with the conserved mean
    k = np.fft.rfftfreq(fine, d=1.0 / fine)
    spec = np.fft.rfft(u0 - c, axis=-1)
    integral = np.zeros_like(spec)
    integral[:, 1:] = spec[:, 1:] / (2j * np.pi * k[1:])
    phi0 = np.fft.rfft(np.exp(-np.fft.irfft(integral, n=fine) / (2 * eps)), axis=-1)
    weight = np.where((k == 0) | (k == fine // 2), 1.0, 2.0) / fine
    out = []
    for tt in t:
        coef = phi0 * np.exp(-eps * (2 * np.pi * k) ** 2 * tt) * weight
        basis = np.exp(2j * np.pi * k[None, None, :] * (x[None, :] - c * tt)[:, :, None])
        phi = np.einsum("nxk,nk->nx", basis, coef).real
        phi_x = np.einsum("nxk,nk->nx", basis, coef * 2j * np.pi * k).real
        out.append(c - 2 * eps * phi_x / phi)
    return np.stack(out, 1)


def test_burgers_matches_cole_hopf_and_conserves_mass():
    ic, t = _smooth_ic(6, 3), np.array([0.0, 0.02, 0.05, 0.1])
    errors = []
    for res in (64, 128, 256):
        x = ps.cell_centres(res)
        u = ps.solve_burgers(ic(x), 1.0, t)
        exact = _cole_hopf(ic, 1.0, x, t)
        errors.append(np.abs(u - exact).max() / np.abs(exact).max())
        mass = u.mean(axis=-1)
        np.testing.assert_allclose(mass, mass[:, :1].repeat(len(t), 1), atol=1e-14)
    # second order: measured 4.5e-4, 1.2e-4, 2.9e-5; mass to ~3e-16
    assert errors[-1] < 1e-4, errors
    assert errors[0] / errors[1] > 3.5 and errors[1] / errors[2] > 3.5, errors


def test_burgers_pdebench_initial_conditions_mass_and_maximum_principle():
    ic = ps.SineInitialCondition(16, np.random.default_rng(4), p_abs=0.5, p_window=0.5)
    x = ps.cell_centres(128)
    u = ps.solve_burgers(ic(x), 1.0, np.linspace(0, 0.5, 11))
    mass = u.mean(axis=-1)
    assert np.abs(mass - mass[:, :1]).max() < 1e-13
    umax = np.abs(u).max(axis=-1)
    assert np.all(np.diff(umax, axis=1) <= 1e-12)


def _rd_initial(ic: ps.SineInitialCondition, res: int) -> np.ndarray:
    u0 = ic(ps.cell_centres(res))
    u0 -= u0.min(axis=1, keepdims=True)
    return u0 / u0.max(axis=1, keepdims=True)


def _rd_residual(res: int, h: float) -> float:
    """Relative residual of u_t = ν u_xx + ρ u(1−u) for t ≥ 0.05 (central differences)."""
    u = ps.solve_reaction_diffusion(
        _rd_initial(_smooth_ic(8, 5), res), 0.5, 1.0, np.arange(0, 0.2 + h / 2, h)
    )
    lap = (np.roll(u, 1, -1) - 2 * u + np.roll(u, -1, -1)) * res**2
    rhs = (0.5 * lap + u * (1 - u))[:, 1:-1]
    resid = (u[:, 2:] - u[:, :-2]) / (2 * h) - rhs
    late = int(round(0.05 / h))
    return float(np.linalg.norm(resid[:, late:]) / np.linalg.norm(rhs[:, late:]))


def test_reaction_diffusion_residual_and_bounds():
    coarse, fine = _rd_residual(64, 1e-3), _rd_residual(64, 2.5e-4)
    # measured 1.6e-4 and 1.0e-5: the residual is the O(h²) of the time differences
    assert coarse < 1e-3 and fine < 5e-5 and coarse / fine > 10, (coarse, fine)
    # PDEBench's initial conditions (kinks, windows): the solution stays in [0, 1]
    ic = ps.SineInitialCondition(32, np.random.default_rng(6))
    u = ps.solve_reaction_diffusion(_rd_initial(ic, 128), 0.5, 1.0, np.linspace(0, 1, 11))
    assert u.min() >= -1e-12 and u.max() <= 1 + 1e-12
    # refinement: coarse minus cell-averaged fine solution at t = 1 shrinks
    smooth, t = _smooth_ic(8, 7), np.array([0.0, 1.0])
    sols = {
        r: ps.solve_reaction_diffusion(_rd_initial(smooth, r), 0.5, 1.0, t)[:, -1]
        for r in (64, 128, 256)
    }
    diffs = [
        np.abs(0.5 * (sols[2 * r][:, ::2] + sols[2 * r][:, 1::2]) - sols[r]).max()
        for r in (64, 128)
    ]
    assert diffs[1] < 1e-3 and diffs[0] / diffs[1] > 3, diffs  # measured 1.9e-3, 4.4e-4


def _poisson_square(res: int, beta: float, modes: int = 199) -> np.ndarray:
    """Series solution of −Δu = β on the unit square, u = 0 on the boundary."""
    m = np.arange(1, modes + 1, 2)
    s = np.sin(np.pi * np.outer(ps.cell_centres(res), m))
    c = 16 * beta / (np.pi**4 * np.outer(m, m) * (m[:, None] ** 2 + m[None, :] ** 2))
    return s @ c @ s.T


def test_darcy_solution_satisfies_the_discrete_equation():
    a = ps.DarcyCoefficient(3, np.random.default_rng(7))(32)
    assert set(np.unique(a)) == {0.1, 1.0}
    u = ps.solve_darcy(a, 0.1)
    for ai, ui in zip(a, u, strict=True):
        mat = ps.darcy_operator(ai)
        assert abs(mat - mat.T).max() == 0.0
        assert np.abs(mat @ ui.ravel() - 0.1).max() < 1e-10  # measured ~1e-13
        assert ui.min() > 0  # maximum principle: positive source, zero boundary
    # symmetries: transposing the coefficient transposes u; scaling a by 10 divides u by 10
    np.testing.assert_allclose(ps.solve_darcy(a[0].T, 0.1), u[0].T, rtol=1e-10)
    np.testing.assert_allclose(ps.solve_darcy(10 * a[0], 0.1), u[0] / 10, rtol=1e-10)


def test_darcy_converges_under_refinement():
    # constant coefficient: the Poisson series; second order (measured 1.6e-3, 4.1e-4)
    errs = []
    for res in (32, 64):
        exact = _poisson_square(res, 0.1)
        errs.append(np.abs(ps.solve_darcy(np.ones((res, res)), 0.1) - exact).max() / exact.max())
    assert errs[1] < 5e-4 and errs[0] / errs[1] > 3.5, errs
    # the same random coefficient field at 32, 64, 128 cells: coarse-vs-fine differences shrink
    field = ps.DarcyCoefficient(2, np.random.default_rng(8))
    sols = {r: ps.solve_darcy(field(r), 0.1) for r in (32, 64, 128)}
    diffs = []
    for r in (32, 64):
        f = sols[2 * r]
        coarse = 0.25 * (f[:, ::2, ::2] + f[:, 1::2, ::2] + f[:, ::2, 1::2] + f[:, 1::2, 1::2])
        diffs.append(np.linalg.norm(coarse - sols[r]) / np.linalg.norm(sols[r]))
    assert diffs[1] < diffs[0] < 2e-2, diffs  # measured 1.1e-2, 6.4e-3 (coefficient jumps)


# ---------------------------------------------------------------------------------------------
# (b) generated files read back


def _check_splits(splits, n: int, spec) -> dict[str, np.ndarray]:
    idx = split_indices(n, spec, seed=0, val_fraction=0.1, test_fraction=0.1)
    assert set(splits) == {"train", "val", "test"}
    for name, rows in idx.items():
        assert len(splits[name]["x"]) == len(splits[name]["y"]) == len(rows)
    everything = np.concatenate(list(idx.values()))
    assert sorted(everything.tolist()) == list(range(n))
    return idx


@pytest.mark.parametrize(
    "task,res,x_shape",
    [
        ("advection", 64, (1, 16)),
        ("burgers", 32, (1, 32)),
        ("reaction_diffusion_1d", 32, (1, 32)),
        ("darcy_pdebench", 16, (1, 8, 8)),
    ],
)
def test_generated_files_read_back(tmp_path, task, res, x_shape):
    n = 20
    path = ps.write_dataset(task, n, res, str(tmp_path), seed=1)
    spec = PDE_TASKS[task]
    assert os.path.basename(path) == spec.file
    splits = read_pdebench(str(tmp_path), task)
    idx = _check_splits(splits, n, spec)
    r = spec.res_x
    with h5py.File(path, "r") as f:
        tensor = f["tensor"][()]
        if task == "darcy_pdebench":
            x_all, y_all = f["nu"][()][:, None, ::r, ::r], tensor[:, :, ::r, ::r]
            assert f.attrs["beta"] == 0.1 and tensor.shape == (n, 1, res, res)
        else:
            assert tensor.shape[1] == spec.steps  # PDEBench's 201 / 101 steps
            assert len(f["t-coordinate"]) == spec.steps + 1  # PDEBench's extra coordinate
            t_y = {"advection": 200, "burgers": 200, "reaction_diffusion_1d": 29}[task]
            x_all, y_all = tensor[:, None, 0, ::r], tensor[:, None, t_y, ::r]
    for name, rows in idx.items():
        assert splits[name]["x"].shape[1:] == x_shape and splits[name]["x"].dtype == np.float32
        np.testing.assert_array_equal(splits[name]["x"], x_all[rows])
        np.testing.assert_array_equal(splits[name]["y"], y_all[rows])
    np.testing.assert_array_equal(idx["test"], np.arange(2))  # the reference tests on the head


def test_written_blocks_hold_the_solver_solution(tmp_path):
    n, res = ps.WRITE_BLOCK + 6, 16  # two write blocks
    path = ps.write_dataset("burgers", n, res, str(tmp_path), seed=5)
    x, t = ps.cell_centres(res), np.arange(201) * 0.01
    u0 = ps.SineInitialCondition(n, np.random.default_rng(5))(x)
    with h5py.File(path, "r") as f:
        np.testing.assert_allclose(f["tensor"][()], ps.solve_burgers(u0, 1.0, t), atol=1e-6)
        assert f.attrs["Nu"] == 1.0


def test_console_script_writes_a_readable_file(tmp_path):
    make_pde.main(["--task", "darcy", "--n", "12", "--res", "16", "--out", str(tmp_path)])
    splits = read_pdebench(str(tmp_path / "2D_DarcyFlow_beta0.1_Train.hdf5"), "darcy_pdebench")
    assert splits["train"]["x"].shape == (10, 1, 8, 8)
    with pytest.raises(SystemExit):
        make_pde.main(["--task", "cfd_2d", "--n", "4", "--res", "8", "--out", str(tmp_path)])


# ---------------------------------------------------------------------------------------------
# (c) hand-made files in PDEBench's layouts


def _write(path, **datasets) -> str:
    with h5py.File(path, "w") as f:
        for key, value in datasets.items():
            f.create_dataset(key, data=value)
    return str(path)


def test_single_field_file_reduction_and_target_step(tmp_path):
    n, steps, res = 20, 201, 64
    rng = np.random.default_rng(0)
    tensor = rng.standard_normal((n, steps, res)).astype(np.float32)
    tensor[0, 200, 8] = 777.0  # target step, kept position (8 = 2·4) of test sample 0
    tensor[0, 199, 12] = 555.0  # not the target step
    tensor[0, 200, 9] = 333.0  # dropped by the 4× spatial subsampling
    _write(tmp_path / PDE_TASKS["advection"].file, tensor=tensor)
    splits = read_pdebench(str(tmp_path), "advection")
    assert splits["test"]["y"][0, 0, 2] == 777.0
    for s in splits.values():
        assert not np.isin([555.0, 333.0], s["y"]).any()
    idx = _check_splits(splits, n, PDE_TASKS["advection"])
    np.testing.assert_array_equal(splits["val"]["x"], tensor[idx["val"], None, 0, ::4])
    # reaction-diffusion: t_train 30 ≤ steps, so y is step 29 even in a longer file
    _write(tmp_path / PDE_TASKS["reaction_diffusion_1d"].file, tensor=tensor)
    rd = read_pdebench(str(tmp_path), "reaction_diffusion_1d", seed=3)
    idx = split_indices(
        n, PDE_TASKS["reaction_diffusion_1d"], seed=3, val_fraction=0.1, test_fraction=0.1
    )
    np.testing.assert_array_equal(rd["train"]["y"], tensor[idx["train"], None, 29])
    # other seeds move val only; test stays the first 10%
    assert not np.array_equal(idx["val"], _check_splits(splits, n, PDE_TASKS["advection"])["val"])
    np.testing.assert_array_equal(idx["test"], [0, 1])


def test_darcy_file(tmp_path):
    n = 10
    nu = np.random.default_rng(1).uniform(0.1, 1, (n, 16, 16)).astype(np.float32)
    sol = np.random.default_rng(2).standard_normal((n, 1, 16, 16)).astype(np.float32)
    sol[0, 0, 6, 4] = 9.0
    path = _write(tmp_path / "darcy.hdf5", nu=nu, tensor=sol, **{"x-coordinate": np.arange(16.0)})
    splits = read_pdebench(path, "darcy_pdebench")
    assert splits["test"]["y"][0, 0, 3, 2] == 9.0
    np.testing.assert_array_equal(splits["test"]["x"], nu[:1, None, ::2, ::2])


def _write_groups(path, n: int, shape: tuple[int, ...], rng) -> dict[str, np.ndarray]:
    data = {}
    with h5py.File(path, "w") as f:
        for i in rng.permutation(n):  # written out of order: the reader sorts the keys
            key = str(i).zfill(4)
            data[key] = rng.standard_normal(shape).astype(np.float32)
            f.create_dataset(f"{key}/data", data=data[key])
            f.create_dataset(f"{key}/grid/x", data=np.linspace(0, 1, shape[1]))
            f.create_dataset(f"{key}/grid/t", data=np.linspace(0, 1, shape[0]))
            f[key].attrs["config"] = "sim: {}"
    return data


def test_group_files_1d_and_2d(tmp_path):
    rng = np.random.default_rng(3)
    n = 12
    data = _write_groups(tmp_path / PDE_TASKS["diffusion_sorption"].file, n, (101, 16, 1), rng)
    data["0011"][100, 5, 0] = 42.0  # last sample, target step
    with h5py.File(tmp_path / PDE_TASKS["diffusion_sorption"].file, "a") as f:
        f["0011/data"][100, 5, 0] = 42.0
    splits = read_pdebench(str(tmp_path), "diffusion_sorption")
    assert isinstance(splits["train"]["x"], LazyArray)
    assert splits["test"]["y"].shape == (2, 1, 16)  # the reference tests on the last 10%
    assert splits["test"]["y"][1][0, 5] == 42.0
    idx = _check_splits(splits, n, PDE_TASKS["diffusion_sorption"])
    np.testing.assert_array_equal(idx["test"], [10, 11])
    keys = sorted(data)
    for name, rows in idx.items():
        np.testing.assert_array_equal(
            np.asarray(splits[name]["x"]), np.stack([data[keys[r]][0].T for r in rows])
        )
        np.testing.assert_array_equal(
            splits[name]["y"][::-1], np.stack([data[keys[r]][100].T for r in rows])[::-1]
        )
    # 2D, two channels (diffusion-reaction u, v): x = u at t = 0, y = v at the target step
    data = _write_groups(tmp_path / PDE_TASKS["reaction_diffusion_2d"].file, n, (101, 8, 8, 2), rng)
    splits = read_pdebench(str(tmp_path), "reaction_diffusion_2d")
    assert splits["val"]["x"].shape[1:] == (1, 8, 8)
    for name, rows in _check_splits(splits, n, PDE_TASKS["reaction_diffusion_2d"]).items():
        np.testing.assert_array_equal(
            np.asarray(splits[name]["x"]),
            np.stack([data[keys[r]][0, :, :, :1] for r in rows]).transpose(0, 3, 1, 2),
        )
        np.testing.assert_array_equal(
            np.asarray(splits[name]["y"]),
            np.stack([data[keys[r]][100, :, :, 1:] for r in rows]).transpose(0, 3, 1, 2),
        )
    # one channel (shallow water): both x and y are that channel
    data = _write_groups(tmp_path / PDE_TASKS["shallow_water"].file, n, (101, 8, 8, 1), rng)
    sw = read_pdebench(str(tmp_path), "shallow_water")
    np.testing.assert_array_equal(sw["test"]["y"][0], data["0010"][100].transpose(2, 0, 1))


def test_cfd_1d_flattening_and_shared_normaliser(tmp_path):
    n, steps, res = 20, 101, 8
    rng = np.random.default_rng(4)
    fields = {
        name: (rng.standard_normal((n, steps, res)) * scale + shift).astype(np.float32)
        for name, scale, shift in [("density", 1, 5), ("pressure", 3, 10), ("Vx", 0.5, 0)]
    }
    path = _write(tmp_path / "cfd1d.hdf5", **fields)
    splits = read_pdebench(path, "cfd_1d")
    idx = _check_splits(splits, n, PDE_TASKS["cfd_1d"])
    x_raw = np.concatenate([fields[k][:, 0] for k in ("density", "pressure", "Vx")], -1)[:, None]
    y_raw = np.concatenate([fields[k][:, 100] for k in ("density", "pressure", "Vx")], -1)[:, None]
    train_x = x_raw[idx["train"]].astype(np.float64)
    mean, std = train_x.mean(0), train_x.std(0, ddof=1) + 1e-5  # fit on train x only
    for name, rows in idx.items():
        assert splits[name]["x"].shape == (len(rows), 1, 3 * res)
        np.testing.assert_allclose(splits[name]["x"], (x_raw[rows] - mean) / std, atol=1e-5)
        np.testing.assert_allclose(splits[name]["y"], (y_raw[rows] - mean) / std, atol=1e-5)
    np.testing.assert_allclose(splits["train"]["x"].mean(0), 0.0, atol=1e-5)


def test_cfd_2d_lazy_and_normalised_per_step(tmp_path):
    n, steps, res = 12, 21, 8
    rng = np.random.default_rng(5)
    names = ("density", "pressure", "Vx", "Vy")
    fields = {
        k: rng.standard_normal((n, steps, res, res)).astype(np.float32) + i
        for i, k in enumerate(names)
    }
    path = _write(tmp_path / "cfd2d.hdf5", **fields)
    splits = read_pdebench(path, "cfd_2d")
    idx = _check_splits(splits, n, PDE_TASKS["cfd_2d"])
    np.testing.assert_array_equal(idx["test"], [10, 11])
    x_raw = np.stack([fields[k][:, 0, ::2, ::2] for k in names], 1)
    y_raw = np.stack([fields[k][:, 20, ::2, ::2] for k in names], 1)
    for raw, key in ((x_raw, "x"), (y_raw, "y")):
        fit = raw[idx["train"]].astype(np.float64)
        mean, std = fit.mean(0), fit.std(0, ddof=1) + 1e-5
        for name, rows in idx.items():
            assert isinstance(splits[name][key], LazyArray)
            assert splits[name][key].shape == (len(rows), 4, 4, 4)
            got = splits[name][key][np.arange(len(rows))[::-1]]  # any order, one batch
            np.testing.assert_allclose(got, ((raw[rows] - mean) / std)[::-1], atol=1e-5)


# ---------------------------------------------------------------------------------------------
# (d) malformed files


def _raises(match: str, fn, *args, **kwargs) -> DataFormatError:
    with pytest.raises(DataFormatError, match=match) as e:
        fn(*args, **kwargs)
    return e.value


def test_malformed_files(tmp_path):
    rng = np.random.default_rng(6)
    good = rng.standard_normal((10, 201, 16)).astype(np.float32)
    p = str(tmp_path / "a.hdf5")
    _raises("a.hdf5: file not found", read_pdebench, p, "advection")
    _raises("1D_Burgers_Sols_Nu1.0.hdf5: file not found", read_pdebench, str(tmp_path), "burgers")
    with open(p, "wb") as f:
        f.write(b"not an hdf5 file" * 10)
    _raises("a.hdf5: not a readable HDF5", read_pdebench, p, "advection")
    _write(p, tensor=good)
    size = os.path.getsize(p)
    with open(p, "r+b") as f:
        f.truncate(size // 2)
    _raises("a.hdf5: not a readable HDF5", read_pdebench, p, "advection")
    _write(p, data=good)
    _raises("a.hdf5: missing field 'tensor'", read_pdebench, p, "advection")
    _write(p, tensor=good[:, 0])
    _raises("a.hdf5: field 'tensor' has shape", read_pdebench, p, "advection")
    _write(p, tensor=good[:, :150])
    _raises(
        "a.hdf5: field 'tensor' has 150 time steps; .* at least 201", read_pdebench, p, "burgers"
    )
    _write(p, tensor=good[:, :20])
    _raises(
        "field 'tensor' has 20 time steps; .* at least 30",
        read_pdebench,
        p,
        "reaction_diffusion_1d",
    )
    _write(p, tensor=good.astype(np.int32))
    _raises("field 'tensor' has dtype", read_pdebench, p, "advection")
    bad = good.copy()
    bad[5, 0, 4] = np.nan
    _write(p, tensor=bad)
    _raises("a.hdf5: field 'tensor' has NaN", read_pdebench, p, "advection")
    _write(p, tensor=good[:3])
    _raises("a.hdf5: 3 samples are too few", read_pdebench, p, "advection")
    # Darcy: solution grid must match the coefficient's
    _write(p, nu=good[:, :16], tensor=good[:, None, :15])
    _raises("a.hdf5: field 'tensor' has shape", read_pdebench, p, "darcy_pdebench")
    # CFD: every field present, with one shape
    _write(p, density=good[:, :101], Vx=good[:, :101])
    _raises("a.hdf5: missing field 'pressure'", read_pdebench, p, "cfd_1d")
    _write(p, density=good[:, :101], pressure=good[:, :101], Vx=good[:, :100])
    _raises("a.hdf5: field 'Vx' has shape", read_pdebench, p, "cfd_1d")
    # groups: a sample without data, a sample of another shape
    g = str(tmp_path / "g.h5")
    with h5py.File(g, "w") as f:
        for i in range(10):
            f.create_dataset(f"{i:04d}/data", data=good[i, :101, :, None])
        f.create_dataset("0007/grid/x", data=np.arange(16.0))
        del f["0007/data"]
    _raises(r"g.h5\[0007\]: missing field 'data'", read_pdebench, g, "diffusion_sorption")
    with h5py.File(g, "a") as f:
        f.create_dataset("0007/data", data=good[7, :101, :8, None])
    _raises(r"g.h5\[0007\]: field 'data' has shape", read_pdebench, g, "diffusion_sorption")
    with pytest.raises(ValueError, match="unknown PDEBench task"):
        read_pdebench(p, "navier_stokes")
