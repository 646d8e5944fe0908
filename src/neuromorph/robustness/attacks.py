"""Adversarial attacks under L-infinity and L2 budgets, for ANNs and for SNNs seen through any gradient path.

Algorithms (own implementations, checked against torchattacks 3.5.1 in tests/robustness):

- FGSM (Goodfellow et al., ICLR 2015): ``x' = x + eps sign(g)`` (L2: ``x + eps g / ||g||``).
- RFGSM (Tramer et al., ICLR 2018): random step ``x0 = x + alpha sign(N(0, 1))`` then
  ``x' = x0 + (eps - alpha) sign(g(x0))``.
- PGD (Madry et al., ICLR 2018): uniform random start in the ball, ``steps`` of
  ``x <- P(x + alpha sign(g))`` (L2: normalised gradient), the last iterate.
- APGD-CE / APGD-DLR (Croce & Hein, ICML 2020): step size ``2 eps`` halved at checkpoints
  ``p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)`` when fewer than ``rho = 0.75``
  of the steps since the last checkpoint raised the loss (or the step was not halved and the best loss
  did not move); momentum 0.75; restarts from the best point. DLR loss
  ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12)``.
- Square (Andriushchenko et al., ECCV 2020): gradient-free random search over square windows of side
  ``s = round(sqrt(p h w))`` with the ``p`` schedule of the paper (``p_init / 2^k`` at 10, 50, 200, 500,
  1000, 2000, 4000, 6000, 8000 of 10,000 rescaled iterations); margin loss; Linf: +-eps stripes then
  +-eps windows; L2: the paper's "meta pseudo-Gaussian" windows that move mass between two squares.

Every attack is a frozen dataclass: ``attack(model, x, y, *, gradient=None, generator=None) -> x_adv``.
``model`` is the classifier under test: success is always judged by *its* predictions. ``gradient``
(default ``model``) is the differentiable module the gradients come from: an SNN with a chosen
surrogate (BPTT), its rate-backprop (BPTR) or its ANN twin (see ``neuromorph.conversion.spiking``).
APGD needs ``model``'s prediction at every step; when ``gradient`` is ``model`` or says through
``gradient.forward_equals(model)`` that its forward is ``model``'s bit for bit (an SNN seen through a
surrogate), the logits of the gradient step serve as that prediction (one forward pass less per step,
the same result).

Guards against fake robustness: the models must be in eval mode (``ValueError``); gradients must be
enabled and the gradient model's output must reach its input through autograd (``RuntimeError``);
``x`` must lie in [0, 1]. The result always lies in the eps ball around ``x`` and in [0, 1] (it is
projected once more at the end), up to float rounding of ``x + delta``.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .. import _validate

__all__ = [
    "Attack",
    "FGSM",
    "RFGSM",
    "PGD",
    "APGD",
    "Square",
    "NORMS",
    "check_attackable",
    "project",
    "dlr_loss",
    "margin",
]

NORMS = ("Linf", "L2")
LOSSES = ("ce", "dlr", "kl")


# -- checks ------------------------------------------------------------------------------------------


def check_attackable(model: nn.Module, name: str = "model", *, needs_gradient: bool = True) -> None:
    """Refuse what would make a robustness number meaningless: a module in training mode (batch norm
    statistics and dropout change under attack) and, for gradient attacks, disabled gradients."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"{name} must be a torch.nn.Module, got {type(model).__name__}")
    training = [n or "(the model itself)" for n, m in model.named_modules() if m.training]
    if training:
        raise ValueError(
            f"{name} is in training mode ({training[0]}{' and more' if len(training) > 1 else ''}): call "
            f"{name}.eval() before attacking it; a training-mode model gives meaningless robustness numbers"
        )
    if needs_gradient and (not torch.is_grad_enabled() or torch.is_inference_mode_enabled()):
        raise RuntimeError(
            "gradients are disabled (torch.no_grad() or torch.inference_mode()): a gradient attack would "
            "not move and report fake robustness; run the attack with gradients enabled"
        )


def _check_inputs(x: torch.Tensor, y: torch.Tensor) -> None:
    _validate.finite_tensor("x", x)
    if not x.is_floating_point() or x.dim() < 2:
        raise ValueError(f"x must be a floating batch [B, ...], got {x.dtype} of shape {tuple(x.shape)}")
    if x.numel() and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
        raise ValueError(
            "x must lie in the valid input range [0, 1], got values in "
            f"[{float(x.min()):.4g}, {float(x.max()):.4g}]"
        )
    if not isinstance(y, torch.Tensor) or y.dtype != torch.long or y.shape != x.shape[:1]:
        got = f"{y.dtype} of shape {tuple(y.shape)}" if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"y must be int64 labels of shape {tuple(x.shape[:1])}, got {got}")


def _check_eps(eps, norm) -> None:
    if isinstance(eps, bool) or not isinstance(eps, int | float) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


# -- geometry ----------------------------------------------------------------------------------------


def _norms(t: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norms, shaped to broadcast against ``t``."""
    return t.flatten(1).norm(dim=1).reshape(-1, *([1] * (t.dim() - 1)))


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Nearest point (Linf: clip; L2: rescale) of the eps ball around ``x``, then clipped to [0, 1]
    (clipping only shrinks each coordinate's distance to ``x``, so the result stays in the ball)."""
    delta = x_adv - x
    if norm == "Linf":
        delta = delta.clamp(-eps, eps)
    else:
        delta = delta * torch.clamp(eps / (_norms(delta) + 1e-12), max=1.0)
    return (x + delta).clamp(0.0, 1.0)


def _step(g: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest-ascent direction of unit size: sign (Linf) or normalised gradient (L2)."""
    return g.sign() if norm == "Linf" else g / (_norms(g) + 1e-12)


def _rand(shape, generator: torch.Generator, like: torch.Tensor, kind: str) -> torch.Tensor:
    fn = torch.rand if kind == "uniform" else torch.randn
    return fn(shape, generator=generator, dtype=like.dtype).to(like.device)


def _random_start(x: torch.Tensor, eps: float, norm: str, generator: torch.Generator) -> torch.Tensor:
    if norm == "Linf":
        return project(x + eps * (2 * _rand(x.shape, generator, x, "uniform") - 1), x, eps, norm)
    d = _rand(x.shape, generator, x, "normal")
    r = _rand((x.shape[0],) + (1,) * (x.dim() - 1), generator, x, "uniform")
    return project(x + eps * r * d / (_norms(d) + 1e-12), x, eps, norm)


# -- losses ------------------------------------------------------------------------------------------


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``z_y - max_{i != y} z_i`` per sample (negative = misclassified)."""
    other = logits.clone()
    other[torch.arange(len(y)), y] = -math.inf
    return logits.gather(1, y[:, None])[:, 0] - other.max(1).values


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference-of-logits ratio (Croce & Hein 2020), per sample; needs at least 3 classes."""
    if logits.shape[1] < 3:
        raise ValueError(f"the DLR loss needs at least 3 classes, got {logits.shape[1]}")
    top = logits.sort(1, descending=True).values
    return -margin(logits, y) / (top[:, 0] - top[:, 2] + 1e-12)


def _loss(
    kind: str, logits: torch.Tensor, y: torch.Tensor, clean_logits: torch.Tensor | None
) -> torch.Tensor:
    if kind == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    if kind == "dlr":
        return dlr_loss(logits, y)
    # "kl": KL(p(x) || p(x')) to the clean prediction (TRADES / RFGSM-KL), per sample
    return F.kl_div(F.log_softmax(logits, 1), F.softmax(clean_logits, 1), reduction="none").sum(1)


def _input_gradient(gmodel: nn.Module, x: torch.Tensor, y, kind: str, clean_logits=None):
    """``(dL/dx, L per sample)`` through ``gmodel``; refuses outputs detached from the input."""
    g, loss, _ = _input_gradient_logits(gmodel, x, y, kind, clean_logits)
    return g, loss


def _input_gradient_logits(gmodel: nn.Module, x: torch.Tensor, y, kind: str, clean_logits=None):
    """``(dL/dx, L per sample, logits)`` through ``gmodel`` (all detached)."""
    x = x.detach().requires_grad_(True)
    logits = gmodel(x)
    if not isinstance(logits, torch.Tensor) or not logits.requires_grad:
        raise RuntimeError(
            "the gradient model's output does not depend on its input through autograd (gradients are "
            "disabled or the input is detached inside the model): a gradient attack would report fake "
            "robustness; attack a differentiable path instead (e.g. a surrogate, BPTR or the ANN twin)"
        )
    loss = _loss(kind, logits, y, clean_logits)
    (g,) = torch.autograd.grad(loss.sum(), x, allow_unused=True)
    if g is None:
        raise RuntimeError(
            "the gradient model's output does not reach its input through autograd (the input is detached "
            "inside the model): a gradient attack would report fake robustness"
        )
    return g.detach(), loss.detach(), logits.detach()


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(1)


def _same_forward(gmodel: nn.Module, model: nn.Module) -> bool:
    """Whether ``gmodel``'s forward is ``model``'s (itself, or a module that says so through
    ``forward_equals(model)``, e.g. an SNN seen through a surrogate): its logits then serve as
    ``model``'s predictions, which saves one forward pass of ``model`` per step."""
    if gmodel is model:
        return True
    check = getattr(gmodel, "forward_equals", None)
    return bool(check(model)) if callable(check) else False


# -- attacks -----------------------------------------------------------------------------------------


class Attack(abc.ABC):
    """Base: validation, the eval/gradient guards, the final projection. Subclasses are frozen
    dataclasses with at least ``eps`` and ``norm`` and implement ``_run``."""

    eps: float
    norm: str
    uses_gradient: bool = True

    @property
    def name(self) -> str:
        return f"{type(self).__name__}-{self.norm}"

    def __call__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        gradient: nn.Module | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        _check_inputs(x, y)
        check_attackable(model, "model", needs_gradient=self.uses_gradient)
        if gradient is not None:
            if not self.uses_gradient:
                raise ValueError(f"{self.name} is gradient-free: it queries `model` only; pass gradient=None")
            check_attackable(gradient, "gradient")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        if self.eps == 0 or x.shape[0] == 0:
            return x.detach().clone()
        x = x.detach()
        x_adv = self._run(model, gradient if gradient is not None else model, x, y, gen)
        return project(x_adv.detach(), x, self.eps, self.norm)

    @abc.abstractmethod
    def _run(self, model, gmodel, x, y, gen) -> torch.Tensor: ...


def _post_init(attack, loss_kinds=LOSSES) -> None:
    _check_eps(attack.eps, attack.norm)
    loss = getattr(attack, "loss", None)
    if loss is not None and loss not in loss_kinds:
        raise ValueError(f"loss must be one of {loss_kinds}, got {loss!r}")


def _clean_logits(gmodel, x, kind):
    if kind != "kl":
        return None
    with torch.no_grad():
        return gmodel(x)


@dataclass(frozen=True)
class FGSM(Attack):
    """One signed (Linf) or normalised (L2) gradient step of size ``eps``."""

    eps: float
    norm: str = "Linf"
    loss: str = "ce"

    def __post_init__(self) -> None:
        _post_init(self)

    def _run(self, model, gmodel, x, y, gen):
        g, _ = _input_gradient(gmodel, x, y, self.loss, _clean_logits(gmodel, x, self.loss))
        return x + self.eps * _step(g, self.norm)


@dataclass(frozen=True)
class RFGSM(Attack):
    """Random step of size ``alpha`` (default ``eps / 2``), then one gradient step of ``eps - alpha``.
    ``loss="kl"`` is the RFGSM-KL of robust SNN finetuning (KL to the clean prediction)."""

    eps: float
    norm: str = "Linf"
    alpha: float | None = None
    loss: str = "ce"

    def __post_init__(self) -> None:
        _post_init(self)
        if self.alpha is not None and not (0 <= self.alpha <= self.eps):
            raise ValueError(f"alpha must be in [0, eps={self.eps}], got {self.alpha!r}")

    def _run(self, model, gmodel, x, y, gen):
        alpha = self.eps / 2 if self.alpha is None else self.alpha
        clean = _clean_logits(gmodel, x, self.loss)
        if self.norm == "Linf":
            x0 = x + alpha * _rand(x.shape, gen, x, "normal").sign()
        else:
            d = _rand(x.shape, gen, x, "normal")
            x0 = x + alpha * d / (_norms(d) + 1e-12)
        x0 = project(x0, x, self.eps, self.norm)
        g, _ = _input_gradient(gmodel, x0, y, self.loss, clean)
        return x0 + (self.eps - alpha) * _step(g, self.norm)


@dataclass(frozen=True)
class PGD(Attack):
    """Projected gradient descent: random start, ``steps`` steps of size ``alpha`` (default
    ``2.5 eps / steps``, Madry et al.), last iterate."""

    eps: float
    norm: str = "Linf"
    steps: int = 20
    alpha: float | None = None
    random_start: bool = True
    loss: str = "ce"

    def __post_init__(self) -> None:
        _post_init(self)
        _validate.positive_int("steps", self.steps)
        if self.alpha is not None:
            _validate.positive("alpha", self.alpha)

    def _run(self, model, gmodel, x, y, gen):
        alpha = 2.5 * self.eps / self.steps if self.alpha is None else self.alpha
        clean = _clean_logits(gmodel, x, self.loss)
        x_adv = _random_start(x, self.eps, self.norm, gen) if self.random_start else x.clone()
        for _ in range(self.steps):
            g, _ = _input_gradient(gmodel, x_adv, y, self.loss, clean)
            x_adv = project(x_adv + alpha * _step(g, self.norm), x, self.eps, self.norm)
        return x_adv


@dataclass(frozen=True)
class APGD(Attack):
    """Auto-PGD with the CE (``loss="ce"``) or DLR (``loss="dlr"``) loss; returns, per sample, the first
    point found that ``model`` misclassifies, else the point of highest loss."""

    eps: float
    norm: str = "Linf"
    loss: str = "ce"
    steps: int = 100
    restarts: int = 1
    rho: float = 0.75

    def __post_init__(self) -> None:
        _post_init(self, ("ce", "dlr"))
        _validate.positive_int("steps", self.steps)
        _validate.positive_int("restarts", self.restarts)
        if not 0 < self.rho < 1:
            raise ValueError(f"rho must be in (0, 1), got {self.rho!r}")

    @property
    def name(self) -> str:
        return f"APGD-{self.loss.upper()}-{self.norm}"

    def _run(self, model, gmodel, x, y, gen):
        out = x.clone()
        robust = _predict(model, x) == y
        out_loss = torch.full((len(y),), -math.inf, device=x.device)
        for _ in range(self.restarts):
            idx = robust.nonzero().flatten()
            if idx.numel() == 0:
                break
            adv, fooled, best, best_loss = self._single(model, gmodel, x[idx], y[idx], gen)
            better = fooled | (best_loss > out_loss[idx])
            out[idx[better]] = torch.where(
                fooled[better].view(-1, *[1] * (x.dim() - 1)), adv[better], best[better]
            )
            out_loss[idx] = torch.maximum(out_loss[idx], best_loss)
            robust[idx[fooled]] = False
        return out

    def _single(self, model, gmodel, x, y, gen):
        eps, norm, n = self.eps, self.norm, self.steps
        n_check, n_min, decr = max(int(0.22 * n), 1), max(int(0.06 * n), 1), max(int(0.03 * n), 1)
        view = (-1,) + (1,) * (x.dim() - 1)
        if norm == "Linf":
            t = 2 * _rand(x.shape, gen, x, "uniform") - 1
            x_adv = x + eps * t / t.flatten(1).abs().max(1).values.clamp_min(1e-12).view(view)
        else:
            t = _rand(x.shape, gen, x, "normal")
            x_adv = x + eps * t / (_norms(t) + 1e-12)
        x_adv = x_adv.clamp(0.0, 1.0)
        same = _same_forward(gmodel, model)

        def gradient_and_prediction(point):
            g, loss, logits = _input_gradient_logits(gmodel, point, y, self.loss)
            return g, loss, logits.argmax(1) if same else _predict(model, point)

        g, loss, pred = gradient_and_prediction(x_adv)
        fooled = pred != y
        x_best_adv = x_adv.clone()
        x_best, g_best, loss_best = x_adv.clone(), g.clone(), loss.clone()
        step = torch.full((len(y),) + view[1:], 2.0 * eps, device=x.device, dtype=x.dtype)
        x_old = x_adv.clone()
        history = [loss]
        k, counter = n_check, 0
        loss_best_last = loss_best.clone()
        reduced_last = torch.ones_like(fooled)
        for i in range(n):
            momentum = 0.75 if i > 0 else 1.0
            prev = x_adv - x_old
            x_old = x_adv
            z = project(x_adv + step * _step(g, norm), x, eps, norm)
            x_adv = project(x_adv + momentum * (z - x_adv) + (1 - momentum) * prev, x, eps, norm)
            g, loss, pred = gradient_and_prediction(x_adv)
            now = pred != y
            x_best_adv[now & ~fooled] = x_adv[now & ~fooled]
            fooled |= now
            history.append(loss)
            up = loss > loss_best
            x_best[up], g_best[up], loss_best[up] = x_adv[up], g[up], loss[up]
            counter += 1
            if counter == k:
                increases = sum(
                    (history[-1 - j] > history[-2 - j]).float() for j in range(min(k, len(history) - 1))
                )
                oscillating = increases <= k * self.rho
                stuck = ~reduced_last & (loss_best_last >= loss_best)
                halve = oscillating | stuck
                reduced_last = halve.clone()
                loss_best_last = loss_best.clone()
                if halve.any():
                    step[halve] /= 2.0
                    x_adv[halve], g[halve] = x_best[halve], g_best[halve]
                k, counter = max(k - decr, n_min), 0
        return x_best_adv, fooled, x_best, loss_best


def _p_selection(p_init: float, it: int, n_iters: int) -> float:
    it = int(it / n_iters * 10000)
    for bound, div in ((8000, 512), (6000, 256), (4000, 128), (2000, 64), (1000, 32), (500, 16),
                       (200, 8), (50, 4), (10, 2)):  # fmt: skip
        if it > bound:
            return p_init / div
    return p_init


def _randint(low: int, high: int, gen: torch.Generator) -> int:
    return int(torch.randint(low, high, (1,), generator=gen))


def _signs(shape, gen, like, eps) -> torch.Tensor:
    return eps * (2 * torch.randint(0, 2, shape, generator=gen).to(like) - 1)


def _eta_rectangles(x: int, y: int) -> torch.Tensor:
    delta = torch.zeros(x, y)
    cx, cy = x // 2 + 1, y // 2 + 1
    r, c = cx - 1, cy - 1
    for k in range(max(cx, cy)):
        delta[max(r, 0) : min(r + 2 * k + 1, x), max(c, 0) : min(c + 2 * k + 1, y)] += 1.0 / (k + 1) ** 2
        r, c = r - 1, c - 1
    return delta / delta.norm()


def _eta(s: int, gen: torch.Generator) -> torch.Tensor:
    """The L2 Square window: two halves of nested rectangles with opposite signs, unit norm."""
    delta = torch.zeros(s, s)
    delta[: s // 2] = _eta_rectangles(s // 2, s)
    delta[s // 2 :] = -_eta_rectangles(s - s // 2, s)
    delta = delta / delta.norm()
    return delta.t() if float(torch.rand((), generator=gen)) > 0.5 else delta


@dataclass(frozen=True)
class Square(Attack):
    """Black-box Square attack (queries ``model`` only, margin loss, ``queries`` iterations)."""

    eps: float
    norm: str = "Linf"
    queries: int = 5000
    p_init: float = 0.8
    uses_gradient = False

    def __post_init__(self) -> None:
        _post_init(self)
        _validate.positive_int("queries", self.queries)
        if not 0 < self.p_init <= 1:
            raise ValueError(f"p_init must be in (0, 1], got {self.p_init!r}")

    @torch.no_grad()
    def _margin(self, model, x, y) -> torch.Tensor:
        return margin(model(x), y)

    @torch.no_grad()
    def _run(self, model, gmodel, x, y, gen):
        if x.dim() != 4:
            raise ValueError(f"Square needs images [B, C, H, W], got shape {tuple(x.shape)}")
        b, c, h, w = x.shape
        if self.norm == "Linf":
            x_best = (x + _signs((b, c, 1, w), gen, x, self.eps)).clamp(0.0, 1.0)
        else:
            x_best = self._l2_init(x, gen)
        m_best = self._margin(model, x_best, y)
        for it in range(self.queries - 1):
            idx = (m_best > 0).nonzero().flatten()
            if idx.numel() == 0:
                break
            xc, xb = x[idx], x_best[idx]
            p = _p_selection(self.p_init, it, self.queries)
            if self.norm == "Linf":
                x_new = self._linf_step(xc, xb, p, gen)
            else:
                x_new = self._l2_step(xc, xb, p, gen)
            m_new = self._margin(model, x_new, y[idx])
            better = m_new < m_best[idx]
            x_best[idx[better]] = x_new[better]
            m_best[idx[better]] = m_new[better]
        return x_best

    def _linf_step(self, xc, xb, p, gen):
        """Per image: a random window (side ``s``) gets a new random +-eps per channel; redrawn while it
        would leave the image unchanged (as the reference code of Andriushchenko et al.)."""
        n, c, h, w = xc.shape
        s = min(max(int(round(math.sqrt(p * h * w))), 1), h - 1)
        vh = torch.randint(0, max(h - s, 1), (n,), generator=gen).to(xc.device)
        vw = torch.randint(0, max(w - s, 1), (n,), generator=gen).to(xc.device)
        rows, cols = torch.arange(h, device=xc.device), torch.arange(w, device=xc.device)
        in_h = (rows >= vh[:, None]) & (rows < vh[:, None] + s)
        in_w = (cols >= vw[:, None]) & (cols < vw[:, None] + s)
        window = (in_h[:, :, None] & in_w[:, None, :])[:, None]  # [n, 1, h, w]
        delta = xb - xc
        todo = torch.ones(n, dtype=torch.bool, device=xc.device)
        for _ in range(10):
            signs = _signs((n, c, 1, 1), gen, xc, self.eps)
            delta = torch.where(window & todo.view(-1, 1, 1, 1), signs, delta)
            change = torch.where(window, ((xc + delta).clamp(0, 1) - xb).abs(), torch.zeros_like(xc))
            todo = change.flatten(1).max(1).values < 1e-7
            if not todo.any():
                break
        return (xc + delta).clamp(0.0, 1.0)

    def _l2_init(self, x, gen):
        b, c, h, w = x.shape
        delta = torch.zeros_like(x)
        s = max(h // 5, 1)
        start = (h - s * 5) // 2 if h >= 5 else 0
        vh = start
        for _ in range(h // s):
            vw = start
            for _ in range(w // s):
                if vh + s <= h and vw + s <= w:
                    pert = _eta(s, gen).to(x).view(1, 1, s, s)
                    delta[:, :, vh : vh + s, vw : vw + s] += pert * _signs((b, c, 1, 1), gen, x, 1.0)
                vw += s
            vh += s
        return (x + self.eps * delta / (_norms(delta) + 1e-12)).clamp(0.0, 1.0)

    def _l2_step(self, xc, xb, p, gen):
        n, c, h, w = xc.shape
        s = max(int(round(math.sqrt(p * h * w))), 3)
        s = s + 1 if s % 2 == 0 else s
        s = min(s, h if h % 2 else h - 1)
        delta = xb - xc
        vh, vw = _randint(0, h - s + 1, gen), _randint(0, w - s + 1, gen)
        vh2, vw2 = _randint(0, h - s + 1, gen), _randint(0, w - s + 1, gen)
        w1 = (slice(None), slice(None), slice(vh, vh + s), slice(vw, vw + s))
        w2 = (slice(None), slice(None), slice(vh2, vh2 + s), slice(vw2, vw2 + s))
        norm_w1 = delta[w1].pow(2).sum((-2, -1), keepdim=True).sqrt()
        mask = torch.zeros_like(xc)
        mask[w1], mask[w2] = 1.0, 1.0
        norm_image = _norms(delta)
        norm_windows = _norms(delta * mask)
        new = _eta(s, gen).to(xc).view(1, 1, s, s) * _signs((n, c, 1, 1), gen, xc, 1.0)
        new = new + delta[w1] / (norm_w1 + 1e-12)
        budget = (torch.clamp(self.eps**2 - norm_image**2, min=0.0) / c + norm_windows**2).sqrt()
        new = new / (new.pow(2).sum((-2, -1), keepdim=True).sqrt() + 1e-12) * budget
        delta[w2] = 0.0
        delta[w1] = new
        return (xc + self.eps * delta / (_norms(delta) + 1e-12)).clamp(0.0, 1.0)
