"""Numerical solvers that write PDEBench-format HDF5 files (numpy/scipy, vectorised over samples).

Each solver solves the PDE of one PDEBench file; :func:`write_dataset` writes its output in the
layout and under the file name of PDEBench's release, so :func:`xmodal_jax.data.pdebench.
read_pdebench` reads it as it reads the real file:

========================  ====================================  ==================================
task                      equation (PDEBench parameters)        method
========================  ====================================  ==================================
advection                 u_t + β u_x = 0, β = 0.4, periodic    exact: u(x, t) = u0(x − βt)
burgers                   u_t + (u²/2)_x = (ν/π) u_xx, ν = 1    finite volume: MUSCL (MC limiter)
                                                                + Rusanov flux, SSP-RK2; central
                                                                diffusion integrated exactly
                                                                (Strang splitting)
reaction_diffusion_1d     u_t = ν u_xx + ρ u(1 − u),            Strang splitting: exact logistic
                          ν = 0.5, ρ = 1, periodic              reaction + exact integration of
                                                                the 3-point diffusion
darcy_pdebench            −∇·(a∇u) = β on (0,1)², u = 0 on ∂,   cell-centred finite volumes
                          β = 0.1, a ∈ {0.1, 1}                 (5-point), sparse direct solve
========================  ====================================  ==================================

Grids are PDEBench's: ``res`` cells on [0, 1) with the cell centres as coordinates; time steps
every 0.01 (201 steps to t = 2 for advection and Burgers, 101 to t = 1 for reaction-diffusion).
Initial conditions follow PDEBench's ``init_multi``: sums of sines with random amplitudes, phases
and wave numbers ≤ 4, for 10% of samples the absolute value, for 10% a tanh window, a random sign.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable

import h5py
import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

DT_SAVE = 0.01  # PDEBench's save interval for every 1D task
BLOCK = 16  # samples advanced together by the time-stepping solvers (cache-sized arrays)
WRITE_BLOCK = 64  # samples solved and written at once by write_dataset

# PDEBench's parameters and file names for the generated tasks.
ADVECTION_BETA = 0.4
BURGERS_NU = 1.0
RD_NU, RD_RHO = 0.5, 1.0
DARCY_BETA = 0.1
DARCY_VALUES = (1.0, 0.1)  # coefficient above / below the threshold, as PDEBench's Darcy set

FILE_NAMES = {
    "advection": "1D_Advection_Sols_beta0.4.hdf5",
    "burgers": "1D_Burgers_Sols_Nu1.0.hdf5",
    "reaction_diffusion_1d": "ReacDiff_Nu0.5_Rho1.0.hdf5",
    "darcy_pdebench": "2D_DarcyFlow_beta0.1_Train.hdf5",
}
ALIASES = {"darcy": "darcy_pdebench", "reaction_diffusion": "reaction_diffusion_1d"}


def cell_centres(res: int, length: float = 1.0) -> np.ndarray:
    """The ``res`` cell centres of a uniform grid on [0, length), PDEBench's coordinates."""
    return (np.arange(res) + 0.5) * (length / res)


# ---------------------------------------------------------------------------------------------
# initial conditions


class SineInitialCondition:
    """PDEBench's random 1D initial condition as an exact, vectorised function of x.

    ``u0(x) = s · W(x) · A(Σ_k a_k sin(2π m_k x / L + φ_k))`` for every sample: wave numbers
    ``m_k`` as PDEBench's ``init_multi`` draws them (``num_k`` picks among 1…``k_tot``; a
    mode picked twice has twice its wave number; unpicked modes contribute the constant
    ``a_k sin φ_k``), ``A`` = ``abs`` for a fraction ``p_abs`` of samples, ``W`` a tanh window on
    [x_l, x_r] for a fraction ``p_window``, ``s`` = ±1. Being a function, it is exact on any grid
    and at any shifted position (advection). PDEBench divides by ``x_c[-1] − x_c[0]`` instead of
    ``L``, which breaks periodicity; we use ``L``.
    """

    def __init__(
        self,
        n: int,
        rng: np.random.Generator,
        *,
        k_tot: int = 4,
        num_k: int = 2,
        p_abs: float = 0.1,
        p_window: float = 0.1,
        length: float = 1.0,
    ):
        picks = rng.integers(0, k_tot, size=(n, num_k))
        counts = np.zeros((n, k_tot))
        np.add.at(counts, (np.repeat(np.arange(n), num_k), picks.ravel()), 1.0)
        self.k = 2 * np.pi * np.arange(1, k_tot + 1) * counts / length  # [n, k_tot]
        self.amp = rng.uniform(0, 1, (n, k_tot))
        self.phase = rng.uniform(0, 2 * np.pi, (n, k_tot))
        self.use_abs = rng.uniform(size=n) < p_abs
        self.sign = rng.choice([-1.0, 1.0], size=n)
        self.use_window = rng.uniform(size=n) < p_window
        self.xl = rng.uniform(0.1, 0.45, n) * length
        self.xr = rng.uniform(0.55, 0.9, n) * length
        self.trans = 0.01 * length
        self.length = length

    def __len__(self) -> int:
        return len(self.amp)

    def take(self, rows: slice) -> SineInitialCondition:
        """The initial conditions of samples ``rows`` (same draws, so chunked solves agree)."""
        out = copy.copy(self)
        for name in ("k", "amp", "phase", "use_abs", "sign", "use_window", "xl", "xr"):
            setattr(out, name, getattr(self, name)[rows])
        return out

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Values at positions ``x`` (any shape, wrapped into [0, L)): ``[n, *x.shape]``."""
        x = np.mod(np.asarray(x, dtype=np.float64), self.length)
        ex = (slice(None),) + (None,) * x.ndim
        u = np.zeros((len(self), *x.shape))
        for j in range(self.k.shape[1]):
            u += self.amp[:, j][ex] * np.sin(self.k[:, j][ex] * x + self.phase[:, j][ex])
        u[self.use_abs] = np.abs(u[self.use_abs])
        u *= self.sign[ex]
        w = self.use_window
        if w.any():  # tanh only where needed: it dominates the cost at PDEBench's sizes
            u[w] *= 0.5 * (
                np.tanh((x - self.xl[w][ex]) / self.trans)
                - np.tanh((x - self.xr[w][ex]) / self.trans)
            )
        return u


# ---------------------------------------------------------------------------------------------
# advection


def solve_advection(
    u0: Callable[[np.ndarray], np.ndarray] | np.ndarray,
    beta: float,
    x: np.ndarray,
    t: np.ndarray,
    length: float = 1.0,
) -> np.ndarray:
    """Exact solution ``u(x, t) = u0(x − βt)`` of ``u_t + β u_x = 0`` on the periodic [0, L).

    ``u0`` is either a function of position returning ``[n, *x.shape]`` (e.g.
    :class:`SineInitialCondition`; exact for any initial condition) or grid values ``[n, X]`` at
    the uniform periodic points ``x``, shifted in Fourier space (exact for trigonometric
    polynomials the grid resolves). Returns ``[n, len(t), len(x)]`` float64.
    """
    x, t = np.asarray(x, np.float64), np.asarray(t, np.float64)
    if callable(u0):
        return u0(x[None, :] - beta * t[:, None])
    u0 = np.asarray(u0, np.float64)
    freqs = np.fft.rfftfreq(u0.shape[-1], d=length / u0.shape[-1])  # cycles per unit length
    phase = np.exp(-2j * np.pi * freqs[None, :] * beta * t[:, None])  # [T, K]
    spec = np.fft.rfft(u0, axis=-1)[:, None, :] * phase[None]
    return np.fft.irfft(spec, n=u0.shape[-1], axis=-1)


# ---------------------------------------------------------------------------------------------
# shared pieces of the 1D finite-volume solvers


def laplacian_eigenvalues(res: int, dx: float) -> np.ndarray:
    """Eigenvalues of the periodic 3-point Laplacian ``(u_{i+1} − 2u_i + u_{i−1})/dx²``.

    Indexed like ``np.fft.rfft`` coefficients: the circulant matrix is diagonal in Fourier space,
    so ``exp(τ ν L)`` is applied exactly with one FFT pair.
    """
    k = np.arange(res // 2 + 1)
    return -4.0 / dx**2 * np.sin(np.pi * k / res) ** 2


def _diffuse(u: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """``exp(τ ν L) u`` for the 3-point Laplacian, given ``factor = exp(τ ν λ_k)``."""
    return np.fft.irfft(np.fft.rfft(u, axis=-1) * factor, n=u.shape[-1], axis=-1)


def _mc_slope(u: np.ndarray) -> np.ndarray:
    """Monotonised-central limited slope per cell (PDEBench's ``VLlimiter`` with α = 2)."""
    right = np.roll(u, -1, axis=-1) - u
    left = np.roll(right, 1, axis=-1)
    centre = 0.5 * (left + right)
    limited = np.minimum(2 * np.minimum(np.abs(left), np.abs(right)), np.abs(centre))
    return np.copysign(limited, centre) * (left * right > 0)


def burgers_flux_divergence(u: np.ndarray, dx: float) -> np.ndarray:
    """``−(F_{i+1/2} − F_{i−1/2})/dx`` for ``f(u) = u²/2``: MUSCL + Rusanov, periodic.

    The flux difference telescopes, so the cell sum (mass) is conserved to round-off.
    """
    half_slope = 0.5 * _mc_slope(u)
    ul = u + half_slope  # left state at face i+1/2
    ur = np.roll(u - half_slope, -1, axis=-1)  # right state at face i+1/2
    speed = np.maximum(np.abs(ul), np.abs(ur))
    flux = 0.25 * (ul * ul + ur * ur) - 0.5 * speed * (ur - ul)
    return (np.roll(flux, 1, axis=-1) - flux) / dx


def solve_burgers(
    u0: np.ndarray,
    nu: float,
    t: np.ndarray,
    *,
    length: float = 1.0,
    cfl: float = 0.4,
) -> np.ndarray:
    """Viscous Burgers ``u_t + (u²/2)_x = (ν/π) u_xx`` on the periodic [0, L), PDEBench's form.

    ``u0``: ``[n, X]`` cell averages on ``X`` uniform cells; ``t``: increasing save times with
    ``t[0]`` the initial time. Finite volumes: convection by MUSCL reconstruction (MC limiter) with
    a Rusanov flux and SSP-RK2; the central 3-point diffusion is integrated exactly in time (it
    is diagonal in Fourier space), Strang-split around each convection step, so the time step
    obeys only the convective CFL ``dt ≤ cfl · dx / max|u|`` (max |u| never grows: maximum
    principle) and not the ``dx²`` diffusive limit that makes explicit schemes slow at ν = 1.
    Returns ``[n, len(t), X]`` float64.
    """
    u0 = np.asarray(u0, dtype=np.float64)
    res = u0.shape[-1]
    dx = length / res
    lam = laplacian_eigenvalues(res, dx) * (nu / np.pi)
    out = np.empty((u0.shape[0], len(t), res))
    # Blocks of samples keep the working arrays in cache and let each block take the time step
    # of its own max |u|.
    for b in range(0, len(u0), BLOCK):
        u = u0[b : b + BLOCK].copy()
        out[b : b + BLOCK, 0] = u
        for i in range(1, len(t)):
            span = float(t[i] - t[i - 1])
            m = max(1, math.ceil(span * float(np.max(np.abs(u))) / (cfl * dx)))
            dt = span / m
            half, full = np.exp(0.5 * dt * lam), np.exp(dt * lam)
            u = _diffuse(u, half)
            for j in range(m):
                u1 = u + dt * burgers_flux_divergence(u, dx)
                u = 0.5 * (u + u1 + dt * burgers_flux_divergence(u1, dx))
                # two consecutive half diffusion steps merge into one full step
                u = _diffuse(u, half if j == m - 1 else full)
            out[b : b + BLOCK, i] = u
    return out


# ---------------------------------------------------------------------------------------------
# reaction-diffusion (Fisher-KPP)


def logistic_step(u: np.ndarray, rho: float, tau: float) -> np.ndarray:
    """Exact flow of ``u' = ρ u (1 − u)`` over time ``tau`` (maps [0, 1] into [0, 1])."""
    g = math.exp(rho * tau)
    return u * g / (1.0 + u * (g - 1.0))


def solve_reaction_diffusion(
    u0: np.ndarray,
    nu: float,
    rho: float,
    t: np.ndarray,
    *,
    length: float = 1.0,
    dt_max: float = 2.5e-3,
) -> np.ndarray:
    """``u_t = ν u_xx + ρ u (1 − u)`` on the periodic [0, L) (PDEBench's ReacDiff).

    ``u0``: ``[n, X]`` values in [0, 1]. Strang splitting with sub-steps ``dt ≤ dt_max``: half a
    step of the exact logistic flow, a full step of the 3-point diffusion integrated exactly
    (Fourier), half a logistic step. Both pieces preserve [0, 1] (the discrete heat semigroup is
    positive with unit row sums), so the solution stays in [0, 1] up to FFT round-off; the splitting
    error is O(dt²). Returns ``[n, len(t), X]`` float64.
    """
    u = np.array(u0, dtype=np.float64)
    res = u.shape[-1]
    lam = laplacian_eigenvalues(res, length / res) * nu
    out = np.empty((u.shape[0], len(t), res))
    out[:, 0] = u
    for i in range(1, len(t)):
        span = float(t[i] - t[i - 1])
        m = max(1, math.ceil(span / dt_max - 1e-9))
        dt = span / m
        full = np.exp(dt * lam)
        u = logistic_step(u, rho, 0.5 * dt)
        for j in range(m):
            u = _diffuse(u, full)
            u = logistic_step(u, rho, 0.5 * dt if j == m - 1 else dt)
        out[:, i] = u
    return out


# ---------------------------------------------------------------------------------------------
# Darcy flow


def darcy_operator(a: np.ndarray) -> sp.csr_matrix:
    """Cell-centred finite-volume matrix of ``−∇·(a∇u)`` on (0,1)² with ``u = 0`` on the boundary.

    ``a``: ``[H, W]`` cell values (axis 0 = x with ``dx = 1/H``, axis 1 = y with ``dy = 1/W``,
    PDEBench's ``indexing="ij"``). Interior faces use the harmonic mean of the two cells (flux
    continuity across coefficient jumps); boundary faces impose ``u = 0`` on the face itself, half
    a cell from the centre. Unknowns in row-major order; the matrix is symmetric positive
    definite.
    """
    a = np.asarray(a, dtype=np.float64)
    h, w = a.shape
    dx2, dy2 = (1.0 / h) ** 2, (1.0 / w) ** 2
    idx = np.arange(h * w).reshape(h, w)
    tx = 2 * a[1:] * a[:-1] / (a[1:] + a[:-1]) / dx2  # faces between rows i and i+1
    ty = 2 * a[:, 1:] * a[:, :-1] / (a[:, 1:] + a[:, :-1]) / dy2
    diag = np.zeros((h, w))
    diag[1:] += tx
    diag[:-1] += tx
    diag[:, 1:] += ty
    diag[:, :-1] += ty
    diag[0] += 2 * a[0] / dx2
    diag[-1] += 2 * a[-1] / dx2
    diag[:, 0] += 2 * a[:, 0] / dy2
    diag[:, -1] += 2 * a[:, -1] / dy2
    rows = np.concatenate(
        [idx.ravel(), idx[1:].ravel(), idx[:-1].ravel(), idx[:, 1:].ravel(), idx[:, :-1].ravel()]
    )
    cols = np.concatenate(
        [idx.ravel(), idx[:-1].ravel(), idx[1:].ravel(), idx[:, :-1].ravel(), idx[:, 1:].ravel()]
    )
    vals = np.concatenate([diag.ravel(), -tx.ravel(), -tx.ravel(), -ty.ravel(), -ty.ravel()])
    return sp.csr_matrix((vals, (rows, cols)), shape=(h * w, h * w))


def solve_darcy(a: np.ndarray, beta: float) -> np.ndarray:
    """Solves ``−∇·(a∇u) = β`` on (0,1)², ``u = 0`` on the boundary, for each coefficient field.

    ``a``: ``[H, W]`` or ``[n, H, W]`` positive cell values. One sparse direct solve (SuperLU) of
    :func:`darcy_operator` per sample. Returns ``u`` with the shape of ``a``, float64.
    """
    a = np.asarray(a, dtype=np.float64)
    single = a.ndim == 2
    a = a[None] if single else a
    if np.any(a <= 0):
        raise ValueError("Darcy coefficient must be positive")
    out = np.empty_like(a)
    rhs = np.full(a.shape[1] * a.shape[2], float(beta))
    for i, ai in enumerate(a):
        mat = darcy_operator(ai).tocsc()
        out[i] = spla.spsolve(mat, rhs, permc_spec="MMD_AT_PLUS_A").reshape(ai.shape)
    return out[0] if single else out


class DarcyCoefficient:
    """Thresholded Gaussian random fields on [0,1]², exact at any resolution.

    Each field is a random trigonometric series with the spectrum of ``(−Δ + τ²)^(−α/2)``
    (periodic, wave numbers ≤ ``k_max``) thresholded at 0: ``values[0]`` above, ``values[1]``
    below (PDEBench's Darcy coefficients are 1 and 0.1). Evaluating the same series on a finer grid
    gives the same field, which the refinement tests use.
    """

    def __init__(
        self,
        n: int,
        rng: np.random.Generator,
        *,
        alpha: float = 2.0,
        tau: float = 3.0,
        k_max: int = 12,
        values: tuple[float, float] = DARCY_VALUES,
    ):
        k = np.arange(-k_max, k_max + 1)
        kx, ky = np.meshgrid(k, k, indexing="ij")
        sigma = (4 * np.pi**2 * (kx**2 + ky**2) + tau**2) ** (-alpha / 2)
        self.coef = rng.standard_normal((n, *kx.shape)) + 1j * rng.standard_normal((n, *kx.shape))
        self.coef *= sigma
        self.k, self.values = k, values

    def field(self, res: int, rows: slice = slice(None)) -> np.ndarray:
        """Smooth random fields ``rows`` at the ``res × res`` cell centres: ``[n, res, res]``."""
        e = np.exp(2j * np.pi * np.outer(cell_centres(res), self.k))  # [res, K]
        return np.einsum("ik,nkl,jl->nij", e, self.coef[rows], e).real

    def __call__(self, res: int, rows: slice = slice(None)) -> np.ndarray:
        """Coefficients ``rows`` at the ``res × res`` cell centres, ``[n, res, res]``."""
        return np.where(self.field(res, rows) > 0, self.values[0], self.values[1])


# ---------------------------------------------------------------------------------------------
# dataset files


def _times(t_end: float) -> np.ndarray:
    return np.arange(round(t_end / DT_SAVE) + 1) * DT_SAVE


def write_dataset(
    task: str, n: int, res: int, out_dir: str, seed: int = 0, *, overwrite: bool = False
) -> str:
    """Solves ``n`` samples of ``task`` on ``res`` cells (per axis) and writes PDEBench's file.

    ``task``: ``advection``, ``burgers``, ``reaction_diffusion_1d`` (1D: ``tensor`` [n, T, res],
    ``x-coordinate``, ``t-coordinate``, PDEBench's attributes) or ``darcy_pdebench`` (alias
    ``darcy``: ``nu`` [n, res, res] coefficient, ``tensor`` [n, 1, res, res] solution,
    ``x-coordinate``, ``y-coordinate``, attribute ``beta``). Values are float32, the file is named
    as PDEBench's release names it. Samples are solved and written in blocks, so memory does not
    grow with ``n``. Returns the file's path. An existing file there is an error unless
    ``overwrite`` (a dataset is never replaced by accident).
    """
    task = ALIASES.get(task, task)
    if task not in FILE_NAMES:
        raise ValueError(f"no generator for task {task!r}; available: {sorted(FILE_NAMES)}")
    if n < 1 or res < 4:
        raise ValueError(f"need n ≥ 1 and res ≥ 4, got n={n}, res={res}")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, FILE_NAMES[task])
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    rng = np.random.default_rng(seed)
    x = cell_centres(res)
    blocks = [slice(a, min(a + WRITE_BLOCK, n)) for a in range(0, n, WRITE_BLOCK)]
    with h5py.File(path, "w") as f:
        if task == "darcy_pdebench":
            coefficient = DarcyCoefficient(n, rng)
            nu = f.create_dataset("nu", (n, res, res), np.float32)
            sol = f.create_dataset("tensor", (n, 1, res, res), np.float32)
            for rows in blocks:
                a = coefficient(res, rows)
                nu[rows] = a
                sol[rows, 0] = solve_darcy(a, DARCY_BETA)
            f.create_dataset("x-coordinate", data=x.astype(np.float32))
            f.create_dataset("y-coordinate", data=x.astype(np.float32))
            f.attrs["beta"] = DARCY_BETA
            return path
        ic = SineInitialCondition(n, rng)
        if task == "advection":
            t, attrs = _times(2.0), {"beta": ADVECTION_BETA}
            solve = lambda rows: solve_advection(ic.take(rows), ADVECTION_BETA, x, t)
        elif task == "burgers":
            t, attrs, u0 = _times(2.0), {"Nu": BURGERS_NU}, ic(x)
            solve = lambda rows: solve_burgers(u0[rows], BURGERS_NU, t)
        else:
            t, attrs, u0 = _times(1.0), {"Nu": RD_NU, "rho": RD_RHO}, ic(x)
            # PDEBench rescales each sample to [0, 1] (init_multi's if_norm) for the logistic term
            u0 -= u0.min(axis=1, keepdims=True)
            u0 /= np.maximum(u0.max(axis=1, keepdims=True), 1e-12)
            solve = lambda rows: solve_reaction_diffusion(u0[rows], RD_NU, RD_RHO, t)
        tensor = f.create_dataset("tensor", (n, len(t), res), np.float32)
        for rows in blocks:
            tensor[rows] = solve(rows)
        f.create_dataset("x-coordinate", data=x.astype(np.float32))
        # PDEBench saves one more time coordinate than time steps (np.arange(it_tot + 1) * dt).
        f.create_dataset("t-coordinate", data=np.arange(len(t) + 1) * np.float32(DT_SAVE))
        for k, v in attrs.items():
            f.attrs[k] = v
    return path
