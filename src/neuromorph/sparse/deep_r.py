"""DEEP R: train a network under a hard budget of K connections, wrapping any torch optimizer.

Bellec, Kappel, Maass, Legenstein (ICLR 2018), "Deep Rewiring: Training very sparse deep networks";
official code guillaumeBellec/deep_rewiring (MNIST scripts) and IGITUGraz/LSNN-official
(``lsnn/toolbox/rewiring_tools.py``, the optimizer wrapper used with Adam).

Every potential connection k of a rewired weight tensor has a fixed sign s_k and a parameter theta_k;
it is active iff theta_k > 0, and the weight the model uses is

    w_k = s_k * theta_k  if theta_k > 0,  else 0.                                          (1)

One DEEP R step (paper Algorithm 1; the official order) on the active connections:

    theta_k <- theta_k - eta * dE/dtheta_k  (the wrapped optimizer's step; dE/dtheta_k = s_k dE/dw_k)
    theta_k <- theta_k - eta * alpha + sqrt(2 eta T) * nu_k,   nu_k ~ N(0, 1)                (2)

then every connection with theta_k <= 0 becomes dormant (w_k = 0, sign kept), and as many dormant
connections, drawn uniformly, are activated with theta = epsilon (1e-12 as the code), so that exactly K
stay active. eta is the learning rate of the optimizer's param group (schedulers apply), alpha the L1
coefficient, T the temperature; the noise is std = eta * gdnoise in the MNIST scripts, i.e.
T = eta * gdnoise^2 / 2.

Budget: ``budget="per-tensor"`` keeps K_t connections in each tensor (script 1);
``budget="global"`` keeps their sum K and gives the reconnections to tensors by a multinomial draw with
probabilities proportional to each tensor's initial budget (script 2 and the LSNN wrapper), so
connections migrate between layers.

Design (why it looks like this):

- Compact slots. Only active connections carry a theta: one vector ``theta [K]``, grouped by tensor
  (tensor i owns a contiguous slice), with each slot's flat position and sign. Dormant connections have
  no parameter, since hard DEEP R never reads a dormant theta (a reborn connection restarts at
  epsilon). The rewiring work is O(K), not O(size of the weights), and the wrapped optimizer steps K
  numbers instead of the full matrices; the dense weights are written after each step (an O(K)
  scatter), so any module (Linear, Conv, :class:`~neuromorph.layers.RecurrentSpikingLayer`'s
  ``w_in``/``w_rec``, a :class:`~neuromorph.sparse.SparseLinear`) computes with (1) unchanged.
- Wrapping the optimizer: the weights are moved out of the optimizer's param group and ``theta`` is put
  in their place, so the optimizer (SGD, Adam, any ``torch.optim`` class, schedulers included) steps
  theta with the gradient s_k dE/dw_k, read from the weights' ``.grad`` after ``backward()``.
- The disconnection guard of the official Adam wrapper (re-zero theta of connections that were dormant
  before the step, since momentum could revive them) holds by construction: a dormant connection has no
  slot, hence no optimizer state. When a connection dies, its slot's per-entry optimizer state (every
  state tensor shaped like theta: momentum, Adam moments) is zeroed before the slot is given to the
  reborn connection; Adam's step counter is shared, so a reborn slot's moments restart from zero with
  the run's bias correction.
- The per-step bookkeeping (deaths, draws, signs, positions) is O(K) work on small arrays, where the
  fixed cost of a torch call (several microseconds) would dominate: numpy on host arrays (zero-copy
  views of CPU tensors; for CUDA weights theta and the positions are copied once per step), or C.
- Randomness: the initial connections and signs come from ``seed``; the noise and reconnections of step
  n are counter-based random numbers of (seed, n) (SplitMix64, ``deep_r_random.py``), so a resumed
  run continues bit for bit and needs no generator state. :func:`step_noise` gives the noise of a step.
- Two implementations of one step, equal bit for bit (tests): ``impl="numpy"`` (numpy on host arrays,
  the reference; torch ops for CUDA weights) and ``impl="native"`` (``kernels/_deep_r_cpu.c``: gather,
  noise, L1, deaths, reconnections and weight writes in C around the wrapped optimizer's step; for plain
  SGD the update itself too, rounded as torch's ``add_``; CPU float32/float64 dense weights). ``"auto"``
  (default) takes the native one where it applies and the C compiler is there. On the paper's MLP the
  numpy step cost 2.5-3.5x a dense SGD step, nearly all per-call overhead; the native one is at about
  1x (docs/rewiring.md).

Usage::

    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    rewiring = DeepR(opt, rewiring_targets(model), connectivity=0.01, budget="global", l1=1e-5)
    for x, y in data:
        rewiring.zero_grad()
        F.cross_entropy(model(x), y).backward()
        rewiring.step()          # optimizer step + L1 + noise + rewiring; weights written in place
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.optim.optimizer as _optim_module  # the global step hooks (no public accessor)

from ..kernels import cpu_native
from . import deep_r_random as rnd
from .targets import (
    group_lr,
    normalise_targets,
    replace_in_group,
    resolve_budgets,
    step_generator,
    take_out_of_optimizer,
)

__all__ = ["DeepR", "BUDGETS", "IMPLS", "step_noise"]

BUDGETS = ("per-tensor", "global")
IMPLS = ("auto", "native", "numpy")


def step_noise(seed: int, step: int, n: int) -> np.ndarray:
    """The standard normal draws nu of DEEP R's step ``step`` for slots ``0 .. n - 1`` (float64; theta
    moves by ``theta_dtype(nu) * theta_dtype(sqrt(2 eta T))``). A function of (seed, step) only (the
    C library when it is built, else numpy: the same numbers)."""
    seed, step = rnd.check_seed_step(seed, step)
    if n and cpu_native.available():
        out = np.empty(int(n))
        kn, wn, fn = rnd.ziggurat_tables()
        status = cpu_native.deep_r_normals(int(n), seed, step, kn, wn, fn, out)
        if status:
            raise RuntimeError(f"DEEP R noise of step {step}: native draw failed ({status})")
        return out
    return rnd.normals(seed, step, int(n))


def check_hyper(l1, temperature, epsilon=None) -> None:
    """Shared checks of the L1 coefficient, the temperature and epsilon."""
    for name, value in (("l1", l1), ("temperature", temperature)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if value < 0:
            raise ValueError(f"{name} must be non-negative, got {value!r}")
    if epsilon is not None and (
        isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not 0 < epsilon < math.inf
    ):
        raise ValueError(
            f"epsilon (theta of a reborn connection) must be a finite number > 0, got {epsilon!r}"
        )


def _first_distinct(cand: np.ndarray) -> np.ndarray:
    """The distinct entries of ``cand`` in order of first occurrence (a dict for small arrays, where
    np.unique's sort costs more)."""
    if cand.size <= 512:
        return np.array(list(dict.fromkeys(cand.tolist())), dtype=np.int64)
    _, first = np.unique(cand, return_index=True)
    return cand[np.sort(first)]


def _draw(
    active: np.ndarray,
    allowed: np.ndarray | None,
    n: int,
    n_allowed: int,
    n_active: int,
    uniforms: Callable[[int, int], np.ndarray],
    order: Callable[[int], np.ndarray],
) -> np.ndarray:
    """``n`` distinct flat positions drawn uniformly among the allowed inactive ones; marks them active.

    While at least a quarter of the allowed connections is dormant: rejection sampling, the first ``n``
    distinct dormant candidates ``allowed[floor(u_j * n_allowed)]`` for the uniforms u_j, j = 0, 1, ...
    (``uniforms(j, m)`` gives u_j .. u_{j+m-1}; drawn in blocks, vectorised). Else exact: the dormant
    positions in the random order ``order(count)`` (a permutation), the first ``n``. (``rng.integers``
    would cost several times more than uniform doubles for the few tens of candidates of a step.)"""
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    dormant = n_allowed - n_active
    if n > dormant:
        raise ValueError(f"cannot activate {n} connections, only {dormant} are dormant")
    if 4 * dormant >= n_allowed:
        chosen, missing, j = [], n, 0
        while missing:
            m = int(missing * n_allowed / dormant * 1.25) + 16
            cand = (uniforms(j, m) * n_allowed).astype(np.int64)
            j += m
            np.minimum(cand, n_allowed - 1, out=cand)  # u * n rounds up to n for u close to 1
            if allowed is not None:
                cand = allowed[cand]
            take = _first_distinct(cand[~active[cand]])[:missing]  # in order of first draw: uniform
            active[take] = True
            chosen.append(take)
            missing -= take.size
        return chosen[0] if len(chosen) == 1 else np.concatenate(chosen)
    free = ~active
    pool = np.flatnonzero(free if allowed is None else free[allowed])
    if allowed is not None:
        pool = allowed[pool]
    take = pool[order(pool.size)[:n]]
    active[take] = True
    return take


def _reconnect(
    active: np.ndarray, allowed: np.ndarray | None, n: int, n_allowed: int, n_active: int, seed: int,
    step: int, tensor: int,
) -> np.ndarray:  # fmt: skip
    """:func:`_draw` with the step's counter-based numbers: lane ``LANE_DRAW + tensor`` for the
    candidates, keys of lane ``LANE_EXACT + tensor`` (stable argsort) for the exact draw. The reference
    of the C ``deep_r_rewire``, which takes the same positions (and leaves the exact draw to Python)."""
    return _draw(
        active, allowed, n, n_allowed, n_active,
        lambda j, m: rnd.uniforms(seed, step, rnd.LANE_DRAW + tensor, j, m),
        lambda count: np.argsort(rnd.uniforms(seed, step, rnd.LANE_EXACT + tensor, 0, count), kind="stable"),
    )  # fmt: skip


def _initial_draw(active, allowed, n, n_allowed, rng: np.random.Generator) -> np.ndarray:
    """:func:`_draw` of the initial connections from a numpy generator of the seed (consumed in order)."""
    return _draw(active, allowed, n, n_allowed, 0, lambda j, m: rng.random(m), rng.permutation)


_ADD_FMA: dict[torch.dtype, bool | None] = {}


def _torch_add_fma(dtype: torch.dtype) -> bool | None:
    """Whether torch's CPU ``a.add_(b, alpha=c)`` rounds once (a fused multiply-add, as its vectorised
    kernel on FMA hardware) or twice, for both its vector and its scalar path; None when they differ
    (the native step then leaves the update to the optimizer). Probed once per dtype on numbers where the
    two roundings differ: 1 + (1 + 2^-p) * -(1 + 2^-p)."""
    if dtype not in _ADD_FMA:
        p = 12 if dtype == torch.float32 else 27
        x = 1.0 + 2.0**-p
        fused, twice = -(2.0 ** (1 - p) + 2.0 ** (-2 * p)), -(2.0 ** (1 - p))
        kinds = set()
        for n in (1, 67):  # the scalar tail alone, and vectors with a tail
            out = torch.ones(n, dtype=dtype).add_(torch.full((n,), x, dtype=dtype), alpha=-x)
            kinds |= {"fma" if v == fused else "twice" if v == twice else "?" for v in out.tolist()}
        _ADD_FMA[dtype] = True if kinds == {"fma"} else False if kinds == {"twice"} else None
    return _ADD_FMA[dtype]


def _host(t: torch.Tensor) -> np.ndarray:
    """A numpy view of a CPU tensor (shared memory), a host copy of any other."""
    t = t.detach()
    return t.numpy() if t.device.type == "cpu" else t.cpu().numpy()


class DeepR:
    """DEEP R around ``optimizer`` for the tensors ``weights`` (see the module docstring).

    ``weights``: list of ``nn.Parameter``, :class:`SparseLinear` or :class:`RewiringTarget` (signs,
    allowed connections), e.g. ``rewiring_targets(model)``; each must be in ``optimizer``, all in one
    param group. Budget: ``connectivity`` (fraction of the allowed entries, in (0, 1], one number or one
    per tensor) or ``connections`` (counts; with ``budget="global"`` a single int is the total); with
    neither, each tensor keeps its present non-zero entries. Initial connections are drawn uniformly,
    with theta = |w| of the model's initial weights there (so the initial network is the model's own
    initialisation, masked). ``l1`` = alpha, ``temperature`` = T of (2), ``epsilon`` = theta of a reborn
    connection, ``seed`` fixes every random draw."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        weights,
        *,
        connectivity=None,
        connections=None,
        budget: str = "per-tensor",
        l1: float = 1e-5,
        temperature: float = 0.0,
        epsilon: float = 1e-12,
        seed: int = 0,
        impl: str = "auto",
    ) -> None:
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        if budget not in BUDGETS:
            raise ValueError(f"budget must be one of {BUDGETS}, got {budget!r}")
        check_hyper(l1, temperature, epsilon)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        targets = normalise_targets(weights, step_generator(seed, -1))
        if len(targets) > rnd.MAX_TENSORS:
            raise ValueError(f"DEEP R rewires at most {rnd.MAX_TENSORS} tensors, got {len(targets)}")
        groups = take_out_of_optimizer(optimizer, targets, same_group=True)
        self.optimizer, self.targets, self._group = optimizer, targets, groups[0]
        self.global_budget = budget == "global"
        if self.global_budget and any(t.layer is not None for t in targets):
            raise ValueError(
                'budget="global" needs dense weight tensors: a SparseLinear has a fixed number of '
                'connections (use budget="per-tensor")'
            )
        first = targets[0].param
        for t in targets:
            if t.param.device != first.device or t.param.dtype != first.dtype:
                raise ValueError(
                    f"all weights must share device and dtype (their theta is one tensor): {t.where} is "
                    f"{t.param.dtype} on {t.param.device}, weights[0] is {first.dtype} on {first.device}"
                )
        self.l1, self.temperature, self.epsilon, self.seed = (
            float(l1),
            float(temperature),
            float(epsilon),
            seed,
        )
        self.step_count = 0
        self._seed64 = seed % 2**64  # the key of the step's random numbers (deep_r_random.py)
        self._cpu = first.device.type == "cpu"
        budgets = resolve_budgets(targets, connectivity, connections, global_budget=self.global_budget)
        # host-side tables: sign and allowed connections per tensor, and which are active
        self._sign_tables = [np.ascontiguousarray(t.sign.cpu().numpy(), dtype=np.int8) for t in targets]
        self._allowed = [
            None if t.allowed_index is None else np.ascontiguousarray(t.allowed_index.cpu().numpy(), np.int64)
            for t in targets
        ]
        self._active = [np.zeros(t.numel, dtype=bool) for t in targets]
        rng = np.random.default_rng([seed % 2**63, 0])  # the initial connections
        thetas, indices = [], []
        for i, (t, k) in enumerate(zip(targets, budgets, strict=True)):
            if t.layer is not None:
                if k is not None and k != t.layer.values.numel():
                    raise ValueError(
                        f"{t.where} is a SparseLinear with {t.layer.values.numel()} connections, but a "
                        f"budget of {k} was asked: give connectivity/connections None for it"
                    )
                idx = t.layer.index.cpu().numpy().copy()
                if t.allowed_mask is not None and not bool(t.allowed_mask.cpu().numpy()[idx].all()):
                    raise ValueError(f"{t.where} holds connections that its allowed mask forbids")
                self._active[i][idx] = True
            elif k is None:
                idx = t.nonzero_allowed().cpu().numpy()
                if idx.size == 0:
                    raise ValueError(
                        f"{t.where} has no non-zero allowed entry: give connectivity or connections"
                    )
                self._active[i][idx] = True
            else:
                idx = _initial_draw(self._active[i], self._allowed[i], k, t.n_allowed, rng)
            flat = _host(t.dense_weight()).reshape(-1)
            thetas.append(np.maximum(np.abs(flat[idx]), self.epsilon))
            indices.append(idx.astype(np.int64))
        self.budgets = [int(ix.size) for ix in indices]
        self.budget_total = sum(self.budgets)
        self._counts = list(self.budgets)
        self._slice_counts: list[int] | None = None  # caches of _slices, _cpu_views and the step
        self._slice_cache: list[slice] = []
        self._view_key: tuple | None = None
        self._grad_np: np.ndarray | None = None
        self._buf: np.ndarray | None = None
        self._split_w = np.array(self.budgets, dtype=np.float64)  # the global split's weights
        dtype = first.dtype
        self.theta = torch.nn.Parameter(torch.from_numpy(np.concatenate(thetas)).to(first.device, dtype))
        self._theta_np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
        self.index = np.concatenate(indices)
        self.sign = np.concatenate([s[ix] for s, ix in zip(self._sign_tables, indices, strict=True)]).astype(
            self._theta_np_dtype
        )
        self._native = self._native_applies(impl)
        replace_in_group(optimizer.param_groups[self._group], [t.param for t in targets], self.theta)
        with torch.no_grad():
            for t in targets:
                if t.layer is None:
                    t.param.zero_()
            self._write(_host(self.theta))

    # Slots are kept grouped by tensor, so tensor i owns theta[b_i : b_{i+1}], b = cumulative counts.
    def _slices(self) -> list[slice]:
        """The slot range of each tensor (cached; rebuilt when the counts change)."""
        if self._slice_counts != self._counts:
            out, start = [], 0
            for c in self._counts:
                out.append(slice(start, start + c))
                start += c
            self._slice_cache, self._slice_counts = out, list(self._counts)
        return self._slice_cache

    def _cpu_views(self) -> tuple[np.ndarray, list[np.ndarray | None]]:
        """Numpy views of theta and of the flat dense weights (CPU), cached while their storage stays
        the same: ``Tensor.numpy()`` costs microseconds, and the step would call it six times."""
        key = (self.theta.data_ptr(), *[t.param.data_ptr() for t in self.targets])
        if key != self._view_key:
            self._theta_np = self.theta.detach().numpy()
            self._flat = [
                None if t.layer is not None else t.param.detach().numpy().reshape(-1) for t in self.targets
            ]
            self._view_key = key
        return self._theta_np, self._flat

    # -- the step ----------------------------------------------------------------------------------
    def zero_grad(self, set_to_none: bool = True) -> None:
        """The optimizer's ``zero_grad`` and the rewired weights' gradients."""
        self.optimizer.zero_grad(set_to_none=set_to_none)
        for t in self.targets:
            t.param.grad = None

    def _native_applies(self, impl: str) -> bool:
        """Whether the step runs in C: CPU float32/float64 dense weights (no SparseLinear), contiguous."""
        why = None
        if not self._cpu:
            why = "the weights are not on the CPU"
        elif self.theta.dtype not in (torch.float32, torch.float64):
            why = f"the weights are {self.theta.dtype} (float32 or float64 needed)"
        elif any(t.layer is not None for t in self.targets):
            why = "a target is a SparseLinear"
        elif any(not t.param.is_contiguous() for t in self.targets):
            why = "a weight tensor is not contiguous"
        elif impl != "numpy" and not cpu_native.available():
            why = f"the C library is unavailable ({cpu_native.unavailable_reason()})"
        if impl == "native" and why is not None:
            raise ValueError(f'impl="native" cannot be used: {why}')
        if impl == "numpy" or why is not None:
            return False
        kind = self.theta.dtype
        self._c_gather = cpu_native.deep_r_function("deep_r_gather", kind)
        self._c_post = cpu_native.deep_r_function("deep_r_post", kind)
        self._c_rewire = cpu_native.deep_r_function("deep_r_rewire", kind)
        n = len(self.targets)
        self._c_counts = np.array(self._counts, dtype=np.int64)
        self._c_grads = np.zeros(n, dtype=np.int64)
        self._c_weights = np.zeros(n, dtype=np.int64)
        self._c_n_allowed = np.array([t.n_allowed for t in self.targets], dtype=np.int64)
        self._c_died = np.empty(self.budget_total, dtype=np.int64)
        self._c_perm = np.empty(self.budget_total, dtype=np.int64)
        self._c_tables = rnd.ziggurat_tables()
        self._c_static = None
        return True

    def _sgd_fusable(self) -> bool:
        """Whether the native step can do the wrapped optimizer's update itself: plain SGD (no momentum,
        weight decay, maximize; a float lr), no step hooks, and torch's CPU ``add_`` rounding known
        (:func:`_torch_add_fma`). The update is then torch's ``theta.add_(g, alpha=-lr)``, bit for bit,
        without the optimizer's per-call overhead (about a third of a dense SGD step on the MLP)."""
        opt = self.optimizer
        if type(opt) is not torch.optim.SGD:
            return False
        group = opt.param_groups[self._group]
        if (
            group.get("momentum", 0) != 0
            or group.get("weight_decay", 0) != 0
            or group.get("maximize", False)
            or group.get("differentiable", False)
            or not isinstance(group["lr"], (int, float))
            or opt._optimizer_step_pre_hooks
            or opt._optimizer_step_post_hooks
            or _optim_module._global_optimizer_pre_hooks
            or _optim_module._global_optimizer_post_hooks
        ):
            return False
        return _torch_add_fma(self.theta.dtype) is not None

    def _c_addresses(self) -> tuple:
        """Addresses of the arrays the C step reads, built once: every array changes in place, except
        that load_state_tensors replaces index, sign and the sign tables (and clears this cache)."""
        if self._c_static is None:
            addr = lambda arrays: np.array([0 if a is None else a.ctypes.data for a in arrays], np.int64)  # noqa: E731
            self._c_active = addr(self._active)
            self._c_allowed = addr(self._allowed)
            self._c_signs = addr(self._sign_tables)
            self._c_static = tuple(
                a.ctypes.data
                for a in (
                    self._c_counts, self._c_grads, self._c_weights, self.index, self.sign, self._c_died,
                    self._c_perm, self._c_active, self._c_allowed, self._c_n_allowed, self._c_signs,
                    self._split_w, *self._c_tables,
                )
            )  # fmt: skip
        return self._c_static

    @torch.no_grad()
    def step(self) -> None:
        """Optimizer step on theta (gradient read from the weights' ``.grad``, which is then cleared),
        L1 and noise (2), deaths and uniform reconnections to exactly K, weights written in place.

        The native step allocates nothing of size K (theta's gradient and the weights go into buffers
        kept across steps); the numpy step draws the noise into a new array."""
        if self._native:
            self._native_step()
            return
        theta = self.theta
        slices = self._slices()
        if self._cpu:
            th, flat = self._cpu_views()
            if self._grad_np is None or self._grad_np.shape != th.shape:
                self._grad_np = np.empty_like(th)
                self._grad_t = torch.from_numpy(self._grad_np)
                self._buf = np.empty_like(th)
            grad = self._grad_np
            for t, sl in zip(self.targets, slices, strict=True):
                g = t.param.grad
                if g is None:
                    grad[sl] = 0
                    continue
                g = g.numpy().reshape(-1)
                if t.layer is not None:
                    grad[sl] = g
                else:
                    np.take(g, self.index[sl], out=grad[sl], mode="clip")  # indices are in range
                t.param.grad = None
            np.multiply(grad, self.sign, out=grad)
            theta.grad = self._grad_t
        else:
            index = torch.from_numpy(self.index).to(theta.device)
            grad = torch.zeros_like(theta)
            for t, sl in zip(self.targets, slices, strict=True):
                if t.param.grad is not None:
                    g = t.param.grad.reshape(-1)
                    grad[sl] = g.to(theta.dtype) if t.layer is not None else g[index[sl]]
                    t.param.grad = None
            theta.grad = grad * torch.from_numpy(self.sign).to(theta.device)
        self.optimizer.step()
        lr = group_lr(self.optimizer.param_groups[self._group])
        if not self._cpu:
            th = _host(theta)  # a host copy (a view for CPU tensors); copied back below
        if self.temperature > 0:
            noise = step_noise(self._seed64, self.step_count, th.size).astype(th.dtype)
            noise *= th.dtype.type(math.sqrt(2.0 * lr * self.temperature))
            th += noise
        if self.l1 > 0:
            th -= th.dtype.type(lr * self.l1)
        died = np.flatnonzero(th <= 0)
        if died.size:
            self._rewire(died, th)
        if not self._cpu:
            theta.copy_(torch.from_numpy(th))
        self._write(th)
        self.step_count += 1

    def _native_step(self) -> None:
        """:meth:`step` in C (``_deep_r_cpu.c``): [gather, the wrapped optimizer's step], post (with the
        SGD update fused when :meth:`_sgd_fusable`), rewire. Python here only passes addresses."""
        theta = self.theta
        (counts, grads, weights, index, sign, died, perm, active, allowed, n_allowed, signs, split_w,
         kn, wn, fn) = self._c_addresses()  # fmt: skip
        keep = []  # .grad is cleared below: this keeps the gradients' memory alive for C
        for i, t in enumerate(self.targets):
            g = t.param.grad
            if g is not None and (g.dtype != theta.dtype or not g.is_contiguous() or g.device.type != "cpu"):
                g = g.detach().to("cpu", theta.dtype).contiguous()
            keep.append(g)
            self._c_grads[i] = 0 if g is None else g.data_ptr()
            self._c_weights[i] = t.param.data_ptr()
            t.param.grad = None
        n_t = len(self.targets)
        opt = self.optimizer
        fused = self._sgd_fusable()
        if fused:  # the SGD update happens in deep_r_post; the optimizer steps the other parameters
            theta.grad = None
            if getattr(opt.step, "_wrapped_by_lr_sched", False):
                opt._opt_called = True  # what the scheduler's wrapper of opt.step records
            if self._others_in_optimizer():
                opt.step()
        else:
            if self._grad_np is None or self._grad_np.size != self.budget_total:
                self._grad_np = np.empty(self.budget_total, dtype=self._theta_np_dtype)
                self._grad_t = torch.from_numpy(self._grad_np)
            self._c_gather(n_t, counts, grads, index, sign, self._grad_np.ctypes.data)
            theta.grad = self._grad_t
            opt.step()
        lr = group_lr(opt.param_groups[self._group])
        scale = math.sqrt(2.0 * lr * self.temperature) if self.temperature > 0 else 0.0
        shrink = lr * self.l1 if self.l1 > 0 else 0.0
        step = self.step_count
        n_died = self._c_post(
            n_t, counts, theta.data_ptr(), sign, index, weights, fused, grads, lr,
            _ADD_FMA.get(theta.dtype) is True, scale, shrink, self._seed64, step, kn, wn, fn, died,
        )  # fmt: skip
        del keep
        if n_died < 0:
            raise RuntimeError(f"DEEP R step {step}: the native noise draw failed ({n_died})")
        if n_died:
            status = self._c_rewire(
                n_died, died, n_t, counts, index, sign, theta.data_ptr(), active, allowed, n_allowed,
                signs, weights, self.global_budget, split_w, self.epsilon, self._seed64, step, perm,
            )  # fmt: skip
            if status == -3:  # a tensor needs the exact draw: the Python rewiring (nothing was changed)
                th = self._cpu_views()[0]
                self._rewire(self._c_died[:n_died].copy(), th)
                self._write(th)
            elif status < 0:
                raise MemoryError(f"DEEP R step {step}: native rewiring failed ({status})")
            else:
                self._counts = self._c_counts.tolist()
                if not fused:  # plain SGD has no per-entry state
                    self._fix_optimizer_state(self._c_died[:n_died].copy(), self._c_perm if status else None)
        self.step_count += 1

    def _others_in_optimizer(self) -> bool:
        """Whether the wrapped optimizer holds parameters besides theta."""
        return sum(len(g["params"]) for g in self.optimizer.param_groups) > 1

    def _optimizer_state(self) -> list[torch.Tensor]:
        """Per-entry optimizer state of theta (momentum, Adam moments: tensors shaped like theta)."""
        return [
            v
            for v in self.optimizer.state.get(self.theta, {}).values()
            if isinstance(v, torch.Tensor) and v.shape == self.theta.shape
        ]

    def _fix_optimizer_state(self, died: np.ndarray, perm: np.ndarray | None) -> None:
        """Zero the dead slots' optimizer state (their connections are reborn fresh), then apply the
        regrouping permutation ``perm`` (new slot s held old slot perm[s])."""
        state = self._optimizer_state()
        if not state:
            return
        dev = self.theta.device
        died_t = torch.from_numpy(died).to(dev)
        perm_t = None if perm is None else torch.from_numpy(perm.copy()).to(dev)
        for v in state:
            v.index_fill_(0, died_t, 0)
            if perm_t is not None:
                v.copy_(v[perm_t])

    def _rewire(self, died: np.ndarray, th: np.ndarray) -> None:
        """Deaths -> dormant (weight 0, the slot's optimizer state zeroed); the freed slots are given to
        uniformly drawn dormant connections (same tensor, or tensors drawn for a global budget) with
        theta = epsilon. The reference of the C ``deep_r_rewire`` (same draws, same slot order)."""
        slices = self._slices()
        sizes = list(self._counts)
        cuts = np.searchsorted(died, [s.stop for s in slices]).tolist()
        lost = [b - a for a, b in zip([0, *cuts[:-1]], cuts, strict=True)]
        old_index = self.index[died]
        flat = self._cpu_views()[1] if self._cpu else None
        at = 0
        for i, t in enumerate(self.targets):
            if not lost[i]:
                continue
            gone = old_index[at : at + lost[i]]
            at += lost[i]
            self._active[i][gone] = False
            self._counts[i] -= lost[i]
            if t.layer is None:
                if flat is not None:
                    flat[i][gone] = 0
                else:
                    t.param.view(-1).index_fill_(0, torch.from_numpy(gone).to(t.param.device), 0)
        gained = self._global_split(died.size) if self.global_budget else lost
        new_index, new_sign = [], []
        for i, t in enumerate(self.targets):
            if gained[i]:
                idx = _reconnect(
                    self._active[i], self._allowed[i], gained[i], t.n_allowed, self._counts[i],
                    self._seed64, self.step_count, i,
                )  # fmt: skip
                self._counts[i] += gained[i]
                new_index.append(idx)
                new_sign.append(self._sign_tables[i][idx])
        self.index[died] = np.concatenate(new_index)
        self.sign[died] = np.concatenate(new_sign)
        th[died] = self.epsilon
        perm = None
        if gained != lost:  # connections moved between tensors: regroup the slots by tensor
            n = len(self.targets)
            kind = np.int16 if n < 2**15 else np.int64  # a stable sort of int16 keys is a radix sort
            owner = np.repeat(np.arange(n, dtype=kind), sizes)
            owner[died] = np.repeat(np.arange(n, dtype=kind), gained)
            perm = np.argsort(owner, kind="stable")
            self.index[:] = self.index[perm]  # in place: the C step keeps the arrays' addresses
            self.sign[:] = self.sign[perm]
            th[:] = th[perm]
        if self._native:
            self._c_counts[:] = self._counts
        self._fix_optimizer_state(died, perm)

    def _global_split(self, n: int) -> list[int]:
        """Reconnections per tensor under a global budget: each of the ``n`` goes to tensor i with
        probability proportional to its initial budget among the tensors with dormant room left,
        u_j of lane ``LANE_SPLIT`` picking the first i with u_j * total < cumulative weight (as C)."""
        room = np.array([t.n_allowed - c for t, c in zip(self.targets, self._counts, strict=True)])
        w = self._split_w
        weighted = w > 0
        if room.min() >= n and weighted.any():  # no tensor fills up: every draw sees the same weights
            ids = np.flatnonzero(weighted)
            cum = np.cumsum(w[ids])
            u = rnd.uniforms(self._seed64, self.step_count, rnd.LANE_SPLIT, 0, n)
            pick = np.minimum(np.searchsorted(cum, u * cum[-1], side="right"), ids.size - 1)
            return np.bincount(ids[pick], minlength=len(room)).tolist()
        u = rnd.uniforms(self._seed64, self.step_count, rnd.LANE_SPLIT, 0, n)
        gained = [0] * len(room)
        for j in range(n):
            ok = [i for i in range(len(room)) if room[i] - gained[i] > 0 and w[i] > 0]
            if not ok:  # only tensors of weight 0 have room
                gained[next(i for i in range(len(room)) if room[i] - gained[i] > 0)] += 1
                continue
            total = 0.0
            for i in ok:
                total += float(w[i])
            t, cum, pick = float(u[j]) * total, 0.0, ok[-1]
            for i in ok:
                cum += float(w[i])
                if t < cum:
                    pick = i
                    break
            gained[pick] += 1
        return gained

    def _write(self, th: np.ndarray) -> None:
        """Weights from theta, eq. (1): an O(K) scatter (the dormant entries are already 0)."""
        slices = self._slices()
        if self._cpu:
            if self._buf is None or self._buf.shape != th.shape:
                self._buf = np.empty_like(th)
            w = np.multiply(self.sign, th, out=self._buf)
            flat = self._cpu_views()[1]
        else:
            w = self.sign * th
        for i, (t, sl) in enumerate(zip(self.targets, slices, strict=True)):
            if t.layer is None:
                if self._cpu:
                    flat[i][self.index[sl]] = w[sl]
                else:
                    idx = torch.from_numpy(self.index[sl]).to(t.param.device)
                    t.param.view(-1).index_copy_(0, idx, torch.from_numpy(w[sl]).to(t.param))
            else:
                t.layer.values.copy_(torch.from_numpy(w[sl]))
                t.layer.index.copy_(torch.from_numpy(self.index[sl]))

    # -- introspection -----------------------------------------------------------------------------
    def active_counts(self) -> list[int]:
        """Active connections per tensor (= K per tensor, or summing to K with a global budget)."""
        return list(self._counts)

    def connectivity(self) -> list[float]:
        """Fraction of non-zero entries per tensor (the paper's connectivity metric)."""
        return [c / t.numel for c, t in zip(self._counts, self.targets, strict=True)]

    def positions(self) -> list[torch.Tensor]:
        """Flat positions of the active connections of each tensor (slot order)."""
        return [torch.from_numpy(self.index[sl].copy()) for sl in self._slices()]

    # -- checkpoints -------------------------------------------------------------------------------
    def state_tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """Everything needed to continue bit for bit (with the optimizer's own state and the model)."""
        out = {
            f"{prefix}theta": self.theta.detach(),
            f"{prefix}index": torch.from_numpy(self.index.copy()),
            f"{prefix}counts": torch.tensor(self._counts, dtype=torch.long),
            f"{prefix}step": torch.tensor([self.step_count], dtype=torch.long),
        }
        out.update(
            {f"{prefix}sign_table.{i}": torch.from_numpy(s.copy()) for i, s in enumerate(self._sign_tables)}
        )
        return out

    @torch.no_grad()
    def load_state_tensors(self, prefix: str, tensors: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state_tensors` output (theta is copied in place: the optimizer keeps it)."""
        need = ["theta", "index", "counts", "step"] + [f"sign_table.{i}" for i in range(len(self.targets))]
        missing = [k for k in need if f"{prefix}{k}" not in tensors]
        if missing:
            raise ValueError(f"DEEP R state incomplete: missing {', '.join(prefix + k for k in missing)}")
        theta, counts = tensors[f"{prefix}theta"], tensors[f"{prefix}counts"].tolist()
        if (
            theta.shape != self.theta.shape
            or len(counts) != len(self.targets)
            or sum(counts) != theta.numel()
        ):
            raise ValueError(
                f"DEEP R state has {theta.numel()} connections in {len(counts)} tensors, this DEEP R has "
                f"{self.theta.numel()} in {len(self.targets)}"
            )
        self.theta.copy_(theta)
        self.index = tensors[f"{prefix}index"].cpu().numpy().astype(np.int64).copy()
        self._counts = [int(c) for c in counts]
        self.step_count = int(tensors[f"{prefix}step"][0])
        self._sign_tables = [
            tensors[f"{prefix}sign_table.{i}"].cpu().numpy().astype(np.int8).copy()
            for i in range(len(self.targets))
        ]
        slices = self._slices()
        for i, (t, sl) in enumerate(zip(self.targets, slices, strict=True)):
            self._active[i][:] = False
            self._active[i][self.index[sl]] = True
            if t.layer is None:
                t.param.zero_()
        self.sign = np.concatenate(
            [s[self.index[sl]] for s, sl in zip(self._sign_tables, slices, strict=True)]
        ).astype(self._theta_np_dtype)
        if self._native:
            self._c_counts[:] = self._counts
            self._c_static = None  # new index, sign and sign-table arrays
        self._write(_host(self.theta))

    def __repr__(self) -> str:
        return (
            f"DeepR({type(self.optimizer).__name__}, {len(self.targets)} tensors, K={self.budget_total} "
            f"({'global' if self.global_budget else 'per tensor'}), l1={self.l1}, T={self.temperature})"
        )
