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
  fixed cost of a torch call (several microseconds) would dominate; it runs in numpy on host arrays
  (zero-copy views of CPU tensors; for CUDA weights theta and the positions are copied once per step).
- Randomness: the initial connections and signs come from ``seed``; the noise and reconnections of step
  n from ``step_rng(seed, n)`` only (a block of one PCG64 stream), so a resumed run continues bit for bit.
- Cost: the step stays O(K) and, on CPU, allocates nothing of size K (buffers for theta's gradient,
  the noise and the weights; numpy views of theta and the weights cached while their storage stays).

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

import numpy as np
import torch

from .targets import (
    group_lr,
    normalise_targets,
    replace_in_group,
    resolve_budgets,
    step_generator,
    take_out_of_optimizer,
)

__all__ = ["DeepR", "BUDGETS", "step_rng"]

BUDGETS = ("per-tensor", "global")


def _stream(seed: int) -> np.random.PCG64:
    """The PCG64 stream of DEEP R's steps, at step 0."""
    return np.random.PCG64(np.random.SeedSequence([int(seed) % 2**63, 1]))


def step_rng(seed: int, step: int) -> np.random.Generator:
    """The generator of DEEP R's step ``step``: noise first (``standard_normal(K)`` in theta's dtype,
    only when T > 0), then the reconnections. A function of (seed, step) only: step n owns the block
    of 2**64 draws that starts n * 2**64 draws into one PCG64 stream of the seed (blocks never
    overlap). :class:`DeepR` reuses one generator and jumps it (``advance``, O(1)): a fresh
    ``default_rng`` costs tens of microseconds, a sizeable part of a step."""
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or not 0 <= step < 2**64:
        raise ValueError(f"step must be an int in [0, 2**64), got {step!r}")
    bits = _stream(seed)
    bits.advance(int(step) << 64)
    return np.random.Generator(bits)


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


def _draw(
    active: np.ndarray, allowed: np.ndarray | None, n: int, n_allowed: int, n_active: int, rng
) -> np.ndarray:
    """``n`` distinct flat positions drawn uniformly among the allowed inactive ones; marks them active.

    Rejection sampling (draw, drop active ones, keep first occurrences in draw order) while at least a
    quarter of the allowed connections is dormant, else an exact draw from the dormant list. The
    candidates are ``floor(u * n_allowed)`` of uniform doubles (``rng.random``; ``rng.integers`` costs
    several times more for the few tens of candidates of a step); deduplication keeps first occurrences
    with a dict for small batches (np.unique sorts, which costs more there)."""
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    dormant = n_allowed - n_active
    if n > dormant:
        raise ValueError(f"cannot activate {n} connections, only {dormant} are dormant")
    if 4 * dormant >= n_allowed:
        chosen, missing = [], n
        while missing:
            m = int(missing * n_allowed / dormant * 1.25) + 16
            cand = (rng.random(m) * n_allowed).astype(np.int64)
            np.minimum(cand, n_allowed - 1, out=cand)  # u * n rounds up to n for u close to 1
            if allowed is not None:
                cand = allowed[cand]
            cand = cand[~active[cand]]
            if cand.size <= 512:
                take = np.array(list(dict.fromkeys(cand.tolist()))[:missing], dtype=np.int64)
            else:
                _, first = np.unique(cand, return_index=True)
                take = cand[np.sort(first)][:missing]  # distinct, in order of first draw: uniform
            active[take] = True
            chosen.append(take)
            missing -= take.size
        return chosen[0] if len(chosen) == 1 else np.concatenate(chosen)
    free = ~active
    pool = np.flatnonzero(free if allowed is None else free[allowed])
    if allowed is not None:
        pool = allowed[pool]
    take = pool[rng.permutation(pool.size)[:n]]
    active[take] = True
    return take


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
    ) -> None:
        if budget not in BUDGETS:
            raise ValueError(f"budget must be one of {BUDGETS}, got {budget!r}")
        check_hyper(l1, temperature, epsilon)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        targets = normalise_targets(weights, step_generator(seed, -1))
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
        self._bits = _stream(seed)  # step n: this stream jumped to n * 2**64, as step_rng(seed, n)
        self._bits_start = self._bits.state
        self._rng = np.random.Generator(self._bits)
        self._cpu = first.device.type == "cpu"
        budgets = resolve_budgets(targets, connectivity, connections, global_budget=self.global_budget)
        # host-side tables: sign and allowed connections per tensor, and which are active
        self._sign_tables = [t.sign.cpu().numpy().copy() for t in targets]
        self._allowed = [None if t.allowed_index is None else t.allowed_index.cpu().numpy() for t in targets]
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
                idx = _draw(self._active[i], self._allowed[i], k, t.n_allowed, 0, rng)
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
        self._split_p = self._split_w / max(self._split_w.sum(), 1.0)
        dtype = first.dtype
        self.theta = torch.nn.Parameter(torch.from_numpy(np.concatenate(thetas)).to(first.device, dtype))
        self._theta_np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
        self.index = np.concatenate(indices)
        self.sign = np.concatenate([s[ix] for s, ix in zip(self._sign_tables, indices, strict=True)]).astype(
            self._theta_np_dtype
        )
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

    @torch.no_grad()
    def step(self) -> None:
        """Optimizer step on theta (gradient read from the weights' ``.grad``, which is then cleared),
        L1 and noise (2), deaths and uniform reconnections to exactly K, weights written in place.

        On CPU the step allocates nothing of size K: theta's gradient, the noise and the weights
        s * theta are written into buffers kept across steps (the optimizer only reads the gradient)."""
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
        rng = None
        if self.temperature > 0:
            rng = self._step_rng()
            if self._cpu:
                noise = rng.standard_normal(dtype=th.dtype, out=self._buf)
                noise *= math.sqrt(2.0 * lr * self.temperature)
                th += noise
            else:
                th += math.sqrt(2.0 * lr * self.temperature) * rng.standard_normal(th.size, dtype=th.dtype)
        if self.l1 > 0:
            th -= lr * self.l1
        died = np.flatnonzero(th <= 0)
        if died.size:
            self._rewire(died, th, rng if rng is not None else self._step_rng())
        if not self._cpu:
            theta.copy_(torch.from_numpy(th))
        self._write(th)
        self.step_count += 1

    def _step_rng(self) -> np.random.Generator:
        """``step_rng(self.seed, self.step_count)``, without building a generator."""
        self._bits.state = self._bits_start
        self._bits.advance(self.step_count << 64)
        return self._rng

    def _rewire(self, died: np.ndarray, th: np.ndarray, rng: np.random.Generator) -> None:
        """Deaths -> dormant (weight 0, the slot's optimizer state zeroed); the freed slots are given to
        uniformly drawn dormant connections (same tensor, or tensors drawn for a global budget)."""
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
        state = [
            v
            for v in self.optimizer.state.get(self.theta, {}).values()
            if isinstance(v, torch.Tensor) and v.shape == self.theta.shape
        ]
        if state:
            died_t = torch.from_numpy(died).to(self.theta.device)
            for v in state:
                v.index_fill_(0, died_t, 0)
        gained = self._global_split(died.size, rng) if self.global_budget else lost
        new_index, new_sign = [], []
        for i, t in enumerate(self.targets):
            if gained[i]:
                idx = _draw(self._active[i], self._allowed[i], gained[i], t.n_allowed, self._counts[i], rng)
                self._counts[i] += gained[i]
                new_index.append(idx)
                new_sign.append(self._sign_tables[i][idx])
        if len(new_index) == 1:
            self.index[died], self.sign[died] = new_index[0], new_sign[0]
        else:
            self.index[died] = np.concatenate(new_index)
            self.sign[died] = np.concatenate(new_sign)
        th[died] = self.epsilon
        if gained != lost:  # connections moved between tensors: regroup the slots by tensor
            n = len(self.targets)
            kind = np.int16 if n < 2**15 else np.int64  # a stable sort of int16 keys is a radix sort
            owner = np.repeat(np.arange(n, dtype=kind), sizes)
            owner[died] = np.repeat(np.arange(n, dtype=kind), gained)
            perm = np.argsort(owner, kind="stable")
            self.index, self.sign = self.index[perm], self.sign[perm]
            th[:] = th[perm]
            if state:
                perm_t = torch.from_numpy(perm).to(self.theta.device)
                for v in state:
                    v.copy_(v[perm_t])

    def _global_split(self, n: int, rng: np.random.Generator) -> list[int]:
        """Reconnections per tensor: multinomial with p proportional to the initial budgets, each tensor
        capped by its dormant connections (an excess is drawn again among tensors with room)."""
        room = [t.n_allowed - c for t, c in zip(self.targets, self._counts, strict=True)]
        weights = self._split_w
        if min(room) >= n:  # no tensor can be over-filled: one draw (the first round below)
            return rng.multinomial(n, self._split_p).tolist()
        room = np.array(room)
        counts = np.zeros(len(room), dtype=np.int64)
        while n:
            w = weights * (room > counts)
            extra = rng.multinomial(n, w / w.sum())
            take = np.minimum(extra, room - counts)
            counts += take
            n = int((extra - take).sum())
        return counts.tolist()

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
        self._write(_host(self.theta))

    def __repr__(self) -> str:
        return (
            f"DeepR({type(self.optimizer).__name__}, {len(self.targets)} tensors, K={self.budget_total} "
            f"({'global' if self.global_budget else 'per tensor'}), l1={self.l1}, T={self.temperature})"
        )
