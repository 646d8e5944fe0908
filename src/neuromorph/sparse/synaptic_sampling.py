"""Synaptic sampling: Langevin dynamics of synaptic parameters, usable as a torch optimizer.

Kappel, Habenschuss, Legenstein, Maass (NIPS 2015), "Synaptic sampling: a Bayesian approach to neural
network plasticity and rewiring"; journal companion "Network plasticity as Bayesian inference" (PLoS
Comput Biol 11(11):e1004485, 2015). Parameter conventions (prior precision c_p, theta_0 = 3, w_0 = 1,
retraction at theta <= 0) as in IGITUGraz/spore-nest-module (Kappel et al. 2018).

Each synaptic parameter theta_i follows the stochastic differential equation

    d theta_i = beta * [ d/d theta_i log p_S(theta) + d/d theta_i log p_N(x | theta) ] dt
                + sqrt(2 beta T) dW_i

(beta: learning rate, T: temperature, W_i: Wiener process), whose stationary density is
p*(theta) proportional to [p_S(theta) p_N(x | theta)]^(1/T): the posterior at T = 1, its mode as
T -> 0, a flattened posterior for T > 1. With a Gaussian prior of mean mu and precision
c_p = 1 / sigma^2, d/d theta_i log p_S = c_p (mu - theta_i). The likelihood enters through a loss L
with log p_N(x | theta) = -lambda * L + const (lambda = ``likelihood_scale``; e.g. the data set size when
L is a mean over examples). The Euler-Maruyama step with eta = beta * dt (``lr``) is

    theta <- theta + eta * [ c_p (mu - theta) - lambda dL/d theta ] + sqrt(2 eta T) nu,   nu ~ N(0, 1).

Parameter-to-weight maps (``weight_map``), with a fixed sign s per synapse (the sign of the initial
weight) for the maps with retraction:

    "identity":  w = theta                                           (Langevin on the weights)
    "exp":       w = s w_0 exp(theta - theta_0) if theta > 0 else 0   (SPORE; "retracted" synapse)
    "linear":    w = s theta                    if theta > 0 else 0   (the DEEP R map)

so dL/d theta = dL/dw * dw/d theta with dw/d theta = w (exp), s (linear), and 0 for a retracted
synapse: a retracted synapse feels only the prior and the noise, and comes back when its random walk
crosses 0 (rewiring).

Stationary law used to verify the sampler: with a constant log-likelihood gradient g the drift is
c_p (mu + sigma^2 g - theta), so theta ~ N(mu + sigma^2 g, sigma^2 T) and
P(theta <= 0) = Phi(-(mu + sigma^2 g) / (sigma sqrt(T))). The discrete step has the same mean and the
variance sigma^2 T / (1 - eta c_p / 2) (an AR(1) process), which tends to the SDE's as eta -> 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, NamedTuple

import torch

from .. import _validate

__all__ = [
    "WEIGHT_MAPS",
    "THETA_INITS",
    "SamplingParams",
    "WeightMap",
    "langevin_step",
    "theta_to_weight",
    "theta_grad",
    "weight_to_theta",
    "stationary_normal",
    "retracted_probability",
    "discrete_variance_factor",
    "SynapticSampling",
]

WEIGHT_MAPS = ("identity", "exp", "linear")
THETA_INITS = ("weights", "prior")


class SamplingParams(NamedTuple):
    """Constants of one Langevin step: eta (``lr``), T, mu, c_p = 1/sigma^2 and lambda."""

    lr: float
    temperature: float
    prior_mean: float = 0.0
    prior_precision: float = 1.0
    likelihood_scale: float = 1.0


class WeightMap(NamedTuple):
    """Parameter-to-weight map: ``kind`` in ``WEIGHT_MAPS``; ``w0`` and ``theta0`` of the exp map."""

    kind: str = "identity"
    w0: float = 1.0
    theta0: float = 3.0


# -- pure functions -----------------------------------------------------------------------------------


def langevin_step(
    theta: torch.Tensor, grad_theta: torch.Tensor, params: SamplingParams, noise: torch.Tensor
) -> torch.Tensor:
    """One Euler-Maruyama step: theta + eta [c_p (mu - theta) - lambda grad_theta] + sqrt(2 eta T) noise.

    ``grad_theta`` is dL/d theta of the loss L = -log p_N / lambda; ``noise`` holds N(0, 1) draws."""
    drift = params.prior_precision * (params.prior_mean - theta) - params.likelihood_scale * grad_theta
    return theta + params.lr * drift + math.sqrt(2.0 * params.lr * params.temperature) * noise


def theta_to_weight(theta: torch.Tensor, sign: torch.Tensor | None, wmap: WeightMap) -> torch.Tensor:
    """w = theta (identity); s w0 exp(theta - theta0) (exp) or s theta (linear) where theta > 0, else 0."""
    if wmap.kind == "identity":
        return theta.clone()
    active = theta > 0
    if wmap.kind == "exp":
        # exp of a clamped argument: a retracted theta far above theta0 cannot overflow into inf * 0.
        mag = wmap.w0 * torch.exp(torch.where(active, theta, torch.zeros_like(theta)) - wmap.theta0)
    else:
        mag = theta
    return torch.where(active, sign * mag, torch.zeros_like(theta))


def theta_grad(
    grad_weight: torch.Tensor,
    weight: torch.Tensor,
    sign: torch.Tensor | None,
    theta: torch.Tensor,
    wmap: WeightMap,
) -> torch.Tensor:
    """dL/d theta = dL/dw * dw/d theta: dw/d theta = 1 (identity), w (exp), s (linear); 0 where retracted."""
    if wmap.kind == "identity":
        return grad_weight
    if wmap.kind == "exp":
        return grad_weight * weight  # w = 0 on retracted synapses
    return torch.where(theta > 0, grad_weight * sign, torch.zeros_like(grad_weight))


def weight_to_theta(weight: torch.Tensor, wmap: WeightMap) -> torch.Tensor:
    """Inverse map for initialising theta from existing weights: theta0 + log(|w| / w0) (exp; 0 for
    w = 0), |w| (linear), w (identity). A weight below w0 exp(-theta0) gives theta <= 0: retracted."""
    if wmap.kind == "identity":
        return weight.clone()
    mag = weight.abs()
    if wmap.kind == "exp":
        safe = torch.where(mag > 0, mag, torch.ones_like(mag))
        return torch.where(mag > 0, wmap.theta0 + torch.log(safe / wmap.w0), torch.zeros_like(mag))
    return mag


def _check_prior(prior_std: float, likelihood_grad: float, temperature: float) -> None:
    _validate.positive("prior_std", prior_std)
    _validate.positive("temperature", temperature)
    if isinstance(likelihood_grad, bool) or not isinstance(likelihood_grad, (int, float)):
        raise ValueError(f"likelihood_grad must be a finite number, got {likelihood_grad!r}")
    if not math.isfinite(likelihood_grad):
        raise ValueError(f"likelihood_grad must be a finite number, got {likelihood_grad!r}")


def stationary_normal(
    prior_mean: float, prior_std: float, likelihood_grad: float, temperature: float
) -> tuple[float, float]:
    """(mean, std) of the stationary law with a constant log-likelihood gradient g:
    N(mu + sigma^2 g, sigma^2 T)."""
    _check_prior(prior_std, likelihood_grad, temperature)
    return prior_mean + prior_std**2 * likelihood_grad, prior_std * math.sqrt(temperature)


def retracted_probability(
    prior_mean: float, prior_std: float, likelihood_grad: float, temperature: float
) -> float:
    """P(theta <= 0) = Phi(-(mu + sigma^2 g) / (sigma sqrt(T))) at stationarity."""
    mean, std = stationary_normal(prior_mean, prior_std, likelihood_grad, temperature)
    return 0.5 * math.erfc(mean / (std * math.sqrt(2.0)))


def discrete_variance_factor(lr: float, prior_precision: float) -> float:
    """Variance of the discrete step over that of the SDE: 1 / (1 - eta c_p / 2) (needs eta c_p < 2)."""
    _validate.positive("lr", lr)
    _validate.positive("prior_precision", prior_precision)
    if lr * prior_precision >= 2.0:
        raise ValueError(
            f"lr * prior_precision must be < 2 for a stationary law, got {lr * prior_precision!r}"
        )
    return 1.0 / (1.0 - lr * prior_precision / 2.0)


# -- optimizer ----------------------------------------------------------------------------------------


def _finite(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


class SynapticSampling(torch.optim.Optimizer):
    """Synaptic sampling (Kappel et al. 2015) as a torch optimizer over any model's parameters.

    ``step()`` applies theta <- theta + lr [c_p (mu - theta) - likelihood_scale dL/d theta]
    + sqrt(2 lr T) nu to every parameter (``.grad`` holds dL/dw; a parameter without ``.grad`` has a zero
    likelihood gradient and samples its prior), then writes w = map(theta) into the parameter.

    For ``weight_map="identity"`` theta is the parameter itself. For ``"exp"`` and ``"linear"`` theta and
    the fixed sign s (sign of the initial weight, +1 for 0) live in ``state[p]`` and the parameter holds
    the weight; theta is initialised in the constructor (``theta_init="weights"``: the inverse map of the
    current weights; ``"prior"``: draws from N(mu, sigma^2)) and the weights are rewritten as map(theta),
    so the model is consistent before the first forward pass.

    Every option may be set per parameter group (``prior_std`` is turned into ``prior_precision``).
    ``theta_min``/``theta_max`` (optional) clip theta after each step (as SPORE's [-2, 5]; the stationary
    law is then truncated). Noise comes only from ``generator`` (its state is part of ``state_dict()``).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        *,
        lr: float,
        temperature: float = 1.0,
        prior_mean: float = 0.0,
        prior_std: float | None = None,
        prior_precision: float | None = None,
        likelihood_scale: float = 1.0,
        weight_map: str = "identity",
        w0: float = 1.0,
        theta0: float = 3.0,
        theta_min: float | None = None,
        theta_max: float | None = None,
        theta_init: str = "weights",
        generator: torch.Generator,
    ) -> None:
        if not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if prior_std is not None and prior_precision is not None:
            raise ValueError(
                f"give prior_std or prior_precision, not both (got prior_std={prior_std!r}, "
                f"prior_precision={prior_precision!r})"
            )
        if prior_std is not None:
            _validate.positive("prior_std", prior_std)
            prior_precision = 1.0 / float(prior_std) ** 2
        self.generator = generator
        defaults = {
            "lr": lr,
            "temperature": temperature,
            "prior_mean": prior_mean,
            "prior_precision": 1.0 if prior_precision is None else prior_precision,
            "likelihood_scale": likelihood_scale,
            "weight_map": weight_map,
            "w0": w0,
            "theta0": theta0,
            "theta_min": theta_min,
            "theta_max": theta_max,
            "theta_init": theta_init,
        }
        super().__init__(params, defaults)

    # -- groups and state -------------------------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        group = dict(param_group)
        std = group.pop("prior_std", None)
        if std is not None:
            if "prior_precision" in group:
                raise ValueError("a parameter group gives prior_std and prior_precision; give one")
            _validate.positive("prior_std", std)
            group["prior_precision"] = 1.0 / float(std) ** 2
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        self._validate_group(group)
        params = [group["params"]] if isinstance(group["params"], torch.Tensor) else list(group["params"])
        if len({id(p) for p in params}) != len(params):
            raise ValueError("a parameter appears twice in one group; each parameter may be wrapped once")
        group["params"] = params
        super().add_param_group(group)
        for p in self.param_groups[-1]["params"]:
            if not p.is_floating_point():
                raise ValueError(f"params must be floating point tensors, got dtype {p.dtype}")
            self._init_param(p, self.param_groups[-1])

    @staticmethod
    def _validate_group(group: dict[str, Any]) -> None:
        _validate.positive("lr", group["lr"])
        _validate.positive("temperature", group["temperature"], allow_zero=True)
        _validate.positive("prior_precision", group["prior_precision"])
        _validate.positive("likelihood_scale", group["likelihood_scale"], allow_zero=True)
        _finite("prior_mean", group["prior_mean"])
        _validate.positive("w0", group["w0"])
        _finite("theta0", group["theta0"])
        if group["weight_map"] not in WEIGHT_MAPS:
            raise ValueError(f"weight_map must be one of {WEIGHT_MAPS}, got {group['weight_map']!r}")
        if group["theta_init"] not in THETA_INITS:
            raise ValueError(f"theta_init must be one of {THETA_INITS}, got {group['theta_init']!r}")
        lo, hi = group["theta_min"], group["theta_max"]
        for name, value in (("theta_min", lo), ("theta_max", hi)):
            if value is not None:
                _finite(name, value)
        if lo is not None and hi is not None and not lo < hi:
            raise ValueError(f"theta_min must be < theta_max, got theta_min={lo!r}, theta_max={hi!r}")
        if group["lr"] * group["prior_precision"] >= 2.0:
            raise ValueError(
                f"lr * prior_precision must be < 2 (else the step overshoots the prior mean and diverges), "
                f"got lr={group['lr']!r}, prior_precision={group['prior_precision']!r}"
            )

    @staticmethod
    def _wmap(group: dict[str, Any]) -> WeightMap:
        return WeightMap(group["weight_map"], float(group["w0"]), float(group["theta0"]))

    @staticmethod
    def _params(group: dict[str, Any]) -> SamplingParams:
        return SamplingParams(
            float(group["lr"]),
            float(group["temperature"]),
            float(group["prior_mean"]),
            float(group["prior_precision"]),
            float(group["likelihood_scale"]),
        )

    def _normal(self, like: torch.Tensor) -> torch.Tensor:
        draw = torch.randn(
            like.shape, generator=self.generator, dtype=like.dtype, device=self.generator.device
        )
        return draw.to(like.device)

    def _clip(self, theta: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        if group["theta_min"] is not None or group["theta_max"] is not None:
            return theta.clamp(group["theta_min"], group["theta_max"])
        return theta

    @torch.no_grad()
    def _init_param(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        wmap = self._wmap(group)
        if group["theta_init"] == "prior":
            std = 1.0 / math.sqrt(group["prior_precision"])
            theta = group["prior_mean"] + std * self._normal(p)
        else:
            theta = weight_to_theta(p.detach(), wmap)
        theta = self._clip(theta, group)
        if wmap.kind == "identity":
            p.copy_(theta)
            return
        sign = torch.where(p.detach() < 0, -torch.ones_like(p), torch.ones_like(p))
        self.state[p] = {"theta": theta.clone(), "sign": sign}
        p.copy_(theta_to_weight(theta, sign, wmap))

    # -- the step ---------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure=None):
        """One Langevin step on every parameter; returns ``closure()`` if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, wmap = self._params(group), self._wmap(group)
            for p in group["params"]:
                if p.grad is not None and p.grad.is_sparse:
                    raise ValueError("SynapticSampling does not support sparse gradients")
                grad_w = p.grad if p.grad is not None else torch.zeros_like(p)
                noise = self._normal(p)
                if wmap.kind == "identity":
                    p.copy_(self._clip(langevin_step(p, grad_w, params, noise), group))
                    continue
                state = self.state[p]
                theta, sign = state["theta"], state["sign"]
                new = langevin_step(theta, theta_grad(grad_w, p, sign, theta, wmap), params, noise)
                theta.copy_(self._clip(new, group))
                p.copy_(theta_to_weight(theta, sign, wmap))
        return loss

    # -- inspection and edits ---------------------------------------------------------------------

    def _group_of(self, p: torch.Tensor) -> dict[str, Any]:
        for group in self.param_groups:
            if any(q is p for q in group["params"]):
                return group
        raise ValueError("the tensor is not a parameter of this optimizer")

    def theta(self, p: torch.Tensor) -> torch.Tensor:
        """The synaptic parameters behind ``p`` (``p`` itself for the identity map; do not edit in place)."""
        group = self._group_of(p)
        return p if group["weight_map"] == "identity" else self.state[p]["theta"]

    @torch.no_grad()
    def set_theta(self, p: torch.Tensor, theta: torch.Tensor) -> None:
        """Overwrite theta of ``p`` (e.g. a lesion: theta <= 0 retracts) and rewrite the weights."""
        group = self._group_of(p)
        if not isinstance(theta, torch.Tensor) or theta.shape != p.shape:
            got = tuple(theta.shape) if isinstance(theta, torch.Tensor) else type(theta).__name__
            raise ValueError(f"theta must be a tensor of shape {tuple(p.shape)}, got {got}")
        _validate.finite_tensor("theta", theta)
        wmap = self._wmap(group)
        if wmap.kind == "identity":
            p.copy_(theta)
            return
        self.state[p]["theta"].copy_(theta)
        p.copy_(theta_to_weight(self.state[p]["theta"], self.state[p]["sign"], wmap))

    @torch.no_grad()
    def retracted_fraction(self) -> float:
        """Fraction of all parameters with theta <= 0 (retracted synapses)."""
        retracted, total = 0, 0
        for group in self.param_groups:
            for p in group["params"]:
                retracted += int((self.theta(p) <= 0).sum())
                total += p.numel()
        return retracted / max(total, 1)

    # -- state ------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The torch optimizer state (theta and sign per mapped parameter) plus ``generator_state``."""
        sd = super().state_dict()
        sd["generator_state"] = self.generator.get_state()
        return sd

    @torch.no_grad()
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load theta/sign and the groups (and the generator state when present); rewrite the weights."""
        state_dict = dict(state_dict)
        generator_state = state_dict.pop("generator_state", None)
        super().load_state_dict(state_dict)
        if generator_state is not None:
            self.generator.set_state(generator_state)
        for group in self.param_groups:
            wmap = self._wmap(group)
            if wmap.kind == "identity":
                continue
            for p in group["params"]:
                state = self.state.get(p, {})
                if "theta" not in state or "sign" not in state:
                    raise ValueError("state_dict lacks theta/sign for a parameter with a mapped weight")
                p.copy_(theta_to_weight(state["theta"], state["sign"], wmap))
