"""Statistical model of phase-change-memory (PCM) devices for analog in-memory computing.

The PCM-like inference model of IBM aihwkit (``aihwkit.inference.noise.pcm.PCMLikeNoiseModel``; Nandakumar
et al., ICECS 2019, fitted on about one million devices, Joshi et al., Nat. Commun. 2020), as also used by
Ortner et al. (Nat. Commun. 2025, "Rapid learning with phase-change memory-based in-memory computing
through learning-to-learn"). Equations (``reference/hardware.md`` section 1; conductances in uS, times in
seconds):

    mapping        s = g_max / w_max,   w_max = max|W| (per tensor, aihwkit) or a fixed range (L2L: 1)
                   G+ = clamp(s * W, 0, g_max),   G- = clamp(-s * W, 0, g_max),   W = (G+ - G-) / s
    quantisation   W <- round(W / q) * q,   q = w_max / (2^bits - 1)   (2^bits levels per device)
    programming    g_r = G_T / g_max,  sigma_p = (c0 + c1 g_r + c2 g_r^2) * g_max / 25
                   G_p = max(0, G_T + sigma_p * N(0, 1))
    drift exponent g_r' = max(g_r, 1e-7)
                   mu_nu = clip(-0.0155 ln g_r' + 0.0244, 0.049, 0.1)
                   sigma_nu = clip(-0.0125 ln g_r' - 0.0059, 0.008, 0.045)
                   nu = |mu_nu + sigma_nu * N(0, 1)|          drawn once, when the device is programmed
    drift          G_d(t) = G_p * ((t_e + t_0) / t_0)^(-nu),    t_e = t - t_programmed
    read noise     Q_s = min(0.0088 / max((G_p / g_max)^0.65, 1e-3), 0.2)
                   sigma_r = |G_d| * Q_s * sqrt(ln((t_e + t_0 + t_read) / (2 t_read)))
                   G(t) = max(0, G_d(t) + sigma_r * N(0, 1))     fresh at every read
    compensation   alpha(t) = mean|W_p| / mean|W_d(t)|  (global drift compensation, readout with the
                   noise-free drifted weights, as the reference recommends), output scaled by alpha

Every effect has its own switch (``prog_noise_scale``, ``drift_scale``, ``read_noise_scale`` = 0,
``drift_compensation=False``, ``weight_bits=None``); with all of them off a read returns the target
weights bit for bit. The time of inference is handled explicitly at ``t_e = 0`` (aihwkit's
``apply_noise(W, t_inference=0)`` raises there).

Weights are read as ``W = target + ((G+ - G+_T) - (G- - G-_T)) / s``, the same number as ``(G+ - G-)/s``
but without the rounding error of the round trip through ``s``, so that a device that did not move gives
back exactly the weight it was programmed to. Each device of a differential pair drifts with its own
exponent from its own programming time; aihwkit instead re-maps the programmed weight to one pair before
drifting, which changes the reference statistics by less than 0.5% (``docs/hardware.md``).

Pure functions over :class:`PCMParameters` and :class:`PCMState`; randomness only from the
``torch.Generator`` passed in.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

__all__ = [
    "PCMParameters",
    "PCMState",
    "DEFAULT",
    "IDEAL",
    "READ_SAMPLERS",
    "validate_parameters",
    "weight_range",
    "conductance_scale",
    "weights_to_conductances",
    "quantisation_step",
    "quantise",
    "programming_noise",
    "drift_exponents",
    "drift",
    "read_noise_std",
    "program",
    "reprogram",
    "check_time",
    "drifted_weights",
    "compensation_factor",
    "weight_moments",
    "read_weights",
    "DeviceMoments",
    "device_moments",
    "read_from_moments",
]

READ_SAMPLERS = ("pool", "fresh", "exact")
_ZERO_CLIP = 1e-7  # aihwkit's floor on relative conductances and on max|W|


class PCMParameters(NamedTuple):
    """Device and read-out settings; defaults are aihwkit's ``PCMLikeNoiseModel`` / ``InferenceRPUConfig``.

    ``g_max`` (uS) is the conductance of the largest weight ``w_max`` (``None``: max|W| of each tensor at
    programming, aihwkit's single-pair converter; a number: a fixed range with clipping, 1.0 in the L2L
    code). ``weight_bits`` quantises the programmed weights to ``2^bits`` levels per device (``None``:
    analog). The three ``*_scale`` factors multiply programming noise, drift exponents and read noise
    (0 switches the effect off). ``drift_compensation`` applies global drift compensation at read time.
    ``read_sampler`` chooses how a layer draws read noise (:mod:`neuromorph.hardware.analog`): ``"exact"``
    two fresh normals per pair with the clamp at 0 as in the equations; ``"fresh"`` the pair's noise as one
    fresh normal per weight with the same variance (no clamp); ``"pool"`` the same, with the normals taken
    as a random window of a pool redrawn whenever the clock moves (the fast default).
    """

    g_max: float = 25.0
    w_max: float | None = None
    weight_bits: int | None = None
    prog_noise_scale: float = 1.0
    drift_scale: float = 1.0
    read_noise_scale: float = 1.0
    drift_compensation: bool = True
    t_0: float = 20.0
    t_read: float = 250e-9
    prog_coeff: tuple[float, float, float] = (0.26348, 1.9650, -1.1731)
    prog_coeff_g_max_reference: float = 25.0
    read_sampler: str = "pool"


DEFAULT = PCMParameters()
"""aihwkit's defaults: every effect on, analog (unquantised) weights, global drift compensation."""

IDEAL = PCMParameters(prog_noise_scale=0.0, drift_scale=0.0, read_noise_scale=0.0, drift_compensation=False)
"""Every non-ideality off: a deployed layer computes exactly what its digital layer computes."""


class PCMState(NamedTuple):
    """One weight tensor on differential PCM pairs (every tensor has the weight's shape but ``scale``).

    ``target`` the weights the pairs were programmed to (clipped, quantised); ``g_pos``/``g_neg`` the
    conductances right after programming (uS); ``nu_pos``/``nu_neg`` the drift exponents drawn then;
    ``t_pos``/``t_neg`` the programming time of each device (s, float64); ``scale`` uS per weight unit."""

    target: torch.Tensor
    g_pos: torch.Tensor
    g_neg: torch.Tensor
    nu_pos: torch.Tensor
    nu_neg: torch.Tensor
    t_pos: torch.Tensor
    t_neg: torch.Tensor
    scale: torch.Tensor


def _finite_number(name: str, value, *, low: float | None = None, strict: bool = True) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if low is not None and (value <= low if strict else value < low):
        relation = ">" if strict else ">="
        raise ValueError(f"{name} must be {relation} {low}, got {value!r}")


def validate_parameters(p: PCMParameters) -> None:
    """Raise ``ValueError`` naming the field, its value and the allowed range."""
    if not isinstance(p, PCMParameters):
        raise ValueError(f"device model must be a PCMParameters, got {type(p).__name__}")
    _finite_number("g_max (uS)", p.g_max, low=0.0)
    if p.w_max is not None:
        _finite_number("w_max", p.w_max, low=0.0)
    if p.weight_bits is not None and (
        isinstance(p.weight_bits, bool) or not isinstance(p.weight_bits, int) or not 1 <= p.weight_bits <= 16
    ):
        raise ValueError(f"weight_bits must be None (analog) or an int in 1..16, got {p.weight_bits!r}")
    for name in ("prog_noise_scale", "drift_scale", "read_noise_scale"):
        _finite_number(name, getattr(p, name), low=0.0, strict=False)
    if not isinstance(p.drift_compensation, bool):
        raise ValueError(f"drift_compensation must be True or False, got {p.drift_compensation!r}")
    _finite_number("t_0 (s)", p.t_0, low=0.0)
    _finite_number("t_read (s)", p.t_read, low=0.0)
    if len(p.prog_coeff) != 3:
        raise ValueError(f"prog_coeff must hold 3 polynomial coefficients, got {p.prog_coeff!r}")
    for c in p.prog_coeff:
        _finite_number("prog_coeff entries", c)
    _finite_number("prog_coeff_g_max_reference (uS)", p.prog_coeff_g_max_reference, low=0.0)
    if p.read_sampler not in READ_SAMPLERS:
        raise ValueError(f"read_sampler must be one of {READ_SAMPLERS}, got {p.read_sampler!r}")


def _normal(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normals shaped like ``like``, drawn on the generator's device, then moved to ``like``'s."""
    device = generator.device if generator is not None else like.device
    eps = torch.randn(like.shape, generator=generator, dtype=like.dtype, device=device)
    return eps.to(like.device)


# -- mapping and quantisation ---------------------------------------------------------------------------


def weight_range(w: torch.Tensor, p: PCMParameters) -> float:
    """The weight that maps to ``g_max``: ``p.w_max`` or max|W| (floored at 1e-7 as aihwkit)."""
    if p.w_max is not None:
        return float(p.w_max)
    return max(float(w.detach().abs().max()) if w.numel() else 0.0, _ZERO_CLIP)


def conductance_scale(w: torch.Tensor, p: PCMParameters) -> torch.Tensor:
    """``s = g_max / w_max`` in uS per weight unit, as a 0-dim tensor of ``w``'s dtype and device."""
    return torch.tensor(p.g_max / weight_range(w, p), dtype=w.dtype, device=w.device)


def weights_to_conductances(
    w: torch.Tensor, scale: torch.Tensor, g_max: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Target conductances of the pair: ``G+ = clamp(s W, 0, g_max)``, ``G- = clamp(-s W, 0, g_max)``."""
    scaled = w * scale
    return scaled.clamp(0.0, g_max), (-scaled).clamp(0.0, g_max)


def quantisation_step(w_max: float, bits: int) -> float:
    """Grid step of ``bits``-bit devices: ``w_max / (2^bits - 1)`` (levels 0..2^bits - 1 per device)."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
        raise ValueError(f"bits must be an int in 1..16, got {bits!r}")
    _finite_number("w_max", w_max, low=0.0)
    return w_max / (2**bits - 1)


def quantise(
    w: torch.Tensor, step: float, *, stochastic: bool = False, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Round ``w`` to multiples of ``step``: to the nearest (``stochastic=False``), or up with probability
    equal to the remainder (``floor(w / step + u) * step``, ``u ~ U[0, 1)``; unbiased: E[Q(w)] = w)."""
    _finite_number("step", step, low=0.0)
    x = w / step
    if stochastic:
        device = generator.device if generator is not None else w.device
        u = torch.rand(w.shape, generator=generator, dtype=w.dtype, device=device).to(w.device)
        return torch.floor(x + u) * step
    return torch.round(x) * step


# -- device physics -------------------------------------------------------------------------------------


def programming_noise(
    g_target: torch.Tensor, p: PCMParameters, generator: torch.Generator | None
) -> torch.Tensor:
    """``G_p = max(0, G_T + prog_noise_scale * sigma_p(G_T) * N(0, 1))`` (section 1.2)."""
    if p.prog_noise_scale == 0.0:
        return g_target.clone()
    g_r = g_target / p.g_max
    c0, c1, c2 = p.prog_coeff
    sigma = (c0 + c1 * g_r + c2 * g_r * g_r) * (p.g_max / p.prog_coeff_g_max_reference)
    return (g_target + p.prog_noise_scale * sigma * _normal(g_target, generator)).clamp_(min=0.0)


def drift_exponents(
    g_target: torch.Tensor, p: PCMParameters, generator: torch.Generator | None
) -> torch.Tensor:
    """``nu = drift_scale * |mu_nu(G_T) + sigma_nu(G_T) N(0, 1)|`` (section 1.3), drawn at programming."""
    if p.drift_scale == 0.0:
        return torch.zeros_like(g_target)
    log_g = torch.log((g_target / p.g_max).abs().clamp(min=_ZERO_CLIP))
    mu = (-0.0155 * log_g + 0.0244).clamp(0.049, 0.1)
    sigma = (-0.0125 * log_g - 0.0059).clamp(0.008, 0.045)
    return (mu + sigma * _normal(g_target, generator)).abs() * p.drift_scale


def _elapsed(t: float, t_prog: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Seconds since programming, ``t - t_prog``, subtracted in float64 (exact over years), then cast."""
    return (t - t_prog).to(dtype)


def drift(g_prog: torch.Tensor, nu: torch.Tensor, elapsed: torch.Tensor, p: PCMParameters) -> torch.Tensor:
    """``G_d = G_p * ((t_e + t_0) / t_0)^(-nu)`` with ``t_e`` the seconds since programming (>= 0)."""
    if p.drift_scale == 0.0:
        return g_prog
    return g_prog * torch.exp(-nu * torch.log1p(elapsed.to(g_prog.dtype) / p.t_0))


def read_noise_std(
    g_prog: torch.Tensor, g_drift: torch.Tensor, elapsed: torch.Tensor, p: PCMParameters
) -> torch.Tensor:
    """Standard deviation (uS) of a read: ``read_noise_scale * |G_d| * Q_s(G_p) * sqrt(ln((t_e + t_0 +
    t_read) / (2 t_read)))`` (accumulated 1/f noise, section 1.4; finite at ``t_e = 0``)."""
    if p.read_noise_scale == 0.0:
        return torch.zeros_like(g_prog)
    q_s = (0.0088 / ((g_prog.abs() / p.g_max) ** 0.65).clamp(min=1e-3)).clamp(max=0.2)
    # ln((t_e + t_0 + t_read) / (2 t_read)) = ln((t_0 + t_read) / (2 t_read)) + ln1p(t_e / (t_0 + t_read))
    offset = math.log((p.t_0 + p.t_read) / (2.0 * p.t_read))
    sigma_t = torch.sqrt(offset + torch.log1p(elapsed.to(g_prog.dtype) / (p.t_0 + p.t_read)))
    return (p.read_noise_scale * g_drift.abs()) * q_s * sigma_t


# -- programming ----------------------------------------------------------------------------------------


def _targets(w: torch.Tensor, w_max: float, p: PCMParameters, stochastic: bool, generator) -> torch.Tensor:
    target = w.clamp(-w_max, w_max)
    if p.weight_bits is not None:
        step = quantisation_step(w_max, p.weight_bits)
        target = quantise(target, step, stochastic=stochastic, generator=generator).clamp(-w_max, w_max)
    return target


def program(
    w: torch.Tensor,
    p: PCMParameters,
    generator: torch.Generator | None,
    *,
    t: float = 0.0,
    stochastic_rounding: bool = False,
) -> PCMState:
    """Program the weights ``w`` onto fresh differential pairs at time ``t`` (s).

    Targets: ``clip(W, -w_max, w_max)``, quantised if ``p.weight_bits`` (to the nearest level, or
    stochastically); conductances by the mapping; programming noise and drift exponents per device."""
    validate_parameters(p)
    if not isinstance(w, torch.Tensor) or not w.is_floating_point():
        raise ValueError(f"weights must be a floating-point tensor, got {type(w).__name__}")
    if w.numel() and not bool(torch.isfinite(w).all()):
        raise ValueError("weights contain NaN or inf; the devices cannot be programmed to them")
    _finite_number("t (s)", t, low=0.0, strict=False)
    w = w.detach()
    w_max = weight_range(w, p)
    scale = torch.tensor(p.g_max / w_max, dtype=w.dtype, device=w.device)
    target = _targets(w, w_max, p, stochastic_rounding, generator)
    gt_pos, gt_neg = weights_to_conductances(target, scale, p.g_max)
    g_pos = programming_noise(gt_pos, p, generator)
    g_neg = programming_noise(gt_neg, p, generator)
    nu_pos = drift_exponents(gt_pos, p, generator)
    nu_neg = drift_exponents(gt_neg, p, generator)
    t_prog = torch.full(w.shape, float(t), dtype=torch.float64, device=w.device)
    return PCMState(target, g_pos, g_neg, nu_pos, nu_neg, t_prog, t_prog.clone(), scale)


def reprogram(
    state: PCMState, new_target: torch.Tensor, p: PCMParameters, generator: torch.Generator | None, t: float
) -> tuple[PCMState, int]:
    """Write ``new_target`` at time ``t``: only the devices whose target conductance changes are programmed
    (fresh programming noise, drift exponent and programming time); every other device keeps its state bit
    for bit. Returns the new state and the number of device writes."""
    check_time(state, t)
    if new_target.shape != state.target.shape:
        raise ValueError(
            f"new_target must have shape {tuple(state.target.shape)}, got {tuple(new_target.shape)}"
        )
    # Keep targets in the mapped range (beyond w_max the conductance saturates at g_max).
    w_max = p.g_max / float(state.scale)
    new_target = torch.where(new_target != state.target, new_target.clamp(-w_max, w_max), state.target)
    old_pos, old_neg = weights_to_conductances(state.target, state.scale, p.g_max)
    new_pos, new_neg = weights_to_conductances(new_target, state.scale, p.g_max)
    fields = state._asdict()
    writes = 0
    for side, old, new in (("pos", old_pos, new_pos), ("neg", old_neg, new_neg)):
        changed = new != old
        n = int(changed.sum())
        writes += n
        if n == 0:
            continue
        g_t = new[changed]
        g, nu, t_prog = fields[f"g_{side}"].clone(), fields[f"nu_{side}"].clone(), fields[f"t_{side}"].clone()
        g[changed] = programming_noise(g_t, p, generator)
        nu[changed] = drift_exponents(g_t, p, generator)
        t_prog[changed] = float(t)
        fields[f"g_{side}"], fields[f"nu_{side}"], fields[f"t_{side}"] = g, nu, t_prog
    # A device whose target did not change keeps its target exactly (the pair's weight may only differ
    # where one of its devices was written).
    fields["target"] = torch.where(new_pos.ne(old_pos) | new_neg.ne(old_neg), new_target, state.target)
    return PCMState(**fields), writes


# -- reading --------------------------------------------------------------------------------------------


def check_time(state: PCMState, t: float) -> None:
    """``t`` (s) must be finite and not before the programming of any device."""
    _finite_number("t (s)", t)
    last = max(float(state.t_pos.max()), float(state.t_neg.max())) if state.target.numel() else 0.0
    if t < last:
        raise ValueError(
            f"t = {t!r} s is before the devices were programmed (last programming at {last!r} s); "
            "drift runs forward only"
        )


def _drifted_pair(state: PCMState, t: float, p: PCMParameters):
    dtype = state.g_pos.dtype
    e_pos, e_neg = _elapsed(t, state.t_pos, dtype), _elapsed(t, state.t_neg, dtype)
    gd_pos = drift(state.g_pos, state.nu_pos, e_pos, p)
    gd_neg = drift(state.g_neg, state.nu_neg, e_neg, p)
    return gd_pos, gd_neg, e_pos, e_neg


def _weights_from(
    state: PCMState, g_pos: torch.Tensor, g_neg: torch.Tensor, p: PCMParameters
) -> torch.Tensor:
    gt_pos, gt_neg = weights_to_conductances(state.target, state.scale, p.g_max)
    return state.target + ((g_pos - gt_pos) - (g_neg - gt_neg)) / state.scale


def drifted_weights(state: PCMState, t: float, p: PCMParameters) -> torch.Tensor:
    """Noise-free weights at time ``t``: drifted conductances, no read noise, no compensation."""
    check_time(state, t)
    gd_pos, gd_neg, _, _ = _drifted_pair(state, t, p)
    return _weights_from(state, gd_pos, gd_neg, p)


def _alpha(state: PCMState, w_drift: torch.Tensor, p: PCMParameters) -> torch.Tensor:
    one = torch.ones((), dtype=state.target.dtype, device=state.target.device)
    if not p.drift_compensation or state.target.numel() == 0:
        return one
    baseline = _weights_from(state, state.g_pos, state.g_neg, p).abs().mean()
    readout = w_drift.abs().mean()
    usable = (readout > 0) & (baseline > 0)
    return torch.where(usable, baseline / torch.where(usable, readout, one), one)


def compensation_factor(state: PCMState, t: float, p: PCMParameters) -> torch.Tensor:
    """Global drift compensation ``alpha(t) = mean|W_p| / mean|W_d(t)|`` (1 when switched off): the
    readout of the tile with one-hot inputs, taken noise-free; the baseline is the tile right after
    each device's programming."""
    return _alpha(state, drifted_weights(state, t, p), p)


class DeviceMoments(NamedTuple):
    """What a read at one time needs per device: drifted conductances and read-noise std (uS) of both
    devices of each pair, and the compensation factor ``alpha`` (1 when off)."""

    g_pos: torch.Tensor
    g_neg: torch.Tensor
    std_pos: torch.Tensor
    std_neg: torch.Tensor
    alpha: torch.Tensor


def device_moments(state: PCMState, t: float, p: PCMParameters) -> DeviceMoments:
    """Drift, read-noise std and compensation at time ``t`` (computed once per clock move)."""
    check_time(state, t)
    gd_pos, gd_neg, e_pos, e_neg = _drifted_pair(state, t, p)
    alpha = _alpha(state, _weights_from(state, gd_pos, gd_neg, p), p)
    s_pos = read_noise_std(state.g_pos, gd_pos, e_pos, p)
    s_neg = read_noise_std(state.g_neg, gd_neg, e_neg, p)
    return DeviceMoments(gd_pos, gd_neg, s_pos, s_neg, alpha)


def weight_moments(state: PCMState, t: float, p: PCMParameters) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of a read at time ``t``, compensation included:
    ``alpha * W_d(t)`` and ``alpha * sqrt(sigma_r+^2 + sigma_r-^2) / s`` (the pair's read noise as one
    Gaussian; the clamp at 0 conductance is left out, see ``read_sampler``)."""
    m = device_moments(state, t, p)
    mean = _weights_from(state, m.g_pos, m.g_neg, p)
    if p.drift_compensation:
        mean = mean * m.alpha
    std = torch.sqrt(m.std_pos * m.std_pos + m.std_neg * m.std_neg) * (m.alpha / state.scale)
    return mean, std


def read_from_moments(
    state: PCMState, m: DeviceMoments, p: PCMParameters, generator: torch.Generator | None
) -> torch.Tensor:
    """One read: ``G = max(0, G_d + sigma_r N(0, 1))`` per device, then ``alpha * W(G+, G-)``."""
    if p.read_noise_scale == 0.0:
        w = _weights_from(state, m.g_pos, m.g_neg, p)
    else:
        r_pos = (m.g_pos + m.std_pos * _normal(m.g_pos, generator)).clamp_(min=0.0)
        r_neg = (m.g_neg + m.std_neg * _normal(m.g_neg, generator)).clamp_(min=0.0)
        w = _weights_from(state, r_pos, r_neg, p)
    return w * m.alpha if p.drift_compensation else w


def read_weights(
    state: PCMState, t: float, p: PCMParameters, generator: torch.Generator | None
) -> torch.Tensor:
    """One read of the weights at time ``t`` by the device equations: drift, read noise per device with
    the clamp at 0 conductance, then global drift compensation (if on)."""
    return read_from_moments(state, device_moments(state, t, p), p, generator)
