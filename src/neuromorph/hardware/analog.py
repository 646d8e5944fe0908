"""Analog layers on simulated PCM crossbars: deployment, aging, reads, on-chip updates.

A trained model is turned into its hardware version by :func:`deploy`: every ``nn.Linear`` becomes an
:class:`AnalogLinear`, every ``nn.Conv2d`` an :class:`AnalogConv2d`, and the weight tensors of the
spiking layers (every parameter of family ``weights``: ``RecurrentSpikingLayer.w_in``/``w_rec``,
``FeedForwardSpikingLayer.weight``, ``LeakyReadout.weight``) are read through the device model with
``torch.nn.utils.parametrize``. Each weight tensor lives in a :class:`PCMArray`, which holds the device
state of :mod:`neuromorph.hardware.pcm` (programmed conductances, drift exponents, programming times) and
the simulated clock. :func:`age` moves the clock (seconds since deployment); :func:`program_update`
writes a weight update on chip the way the L2L-PCM code does (Ortner et al., Nat. Commun. 2025): the
update is quantised to the device grid (stochastic or nearest rounding) and only the devices whose
conductance target changes are re-programmed, with fresh programming noise, drift exponent and
programming time; the writes are counted.

Reads. The drifted, compensated weights and the read-noise standard deviation are computed once per
clock move (``age``, an update); a read adds fresh noise (``PCMParameters.read_sampler``):

    W_read = alpha * W_d(t) + alpha * sqrt(sigma_r+^2 + sigma_r-^2) / s * eps

with ``eps`` a window of a pool of standard normals redrawn at every clock move (``"pool"``, the
default: one fused multiply-add per read), fresh normals (``"fresh"``), or the two devices read one by one
with the clamp at 0 conductance (``"exact"``). One read is shared by the whole mini-batch of a call (as
the L2L code reads its weights once per forward pass); a spiking layer reads once per call, i.e. per
sequence. Gradients pass straight through the device model to the digital weights (``clip_with_grad``
of the L2L code), so a deployed model can be trained with ``loss.backward()`` and updated on chip.

Time here is in seconds (the unit of the device literature), not the milliseconds of the neuron models.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from .. import _validate
from ..families import BIASES, WEIGHTS
from . import pcm
from .pcm import PCMParameters, PCMState

__all__ = [
    "PCMArray",
    "AnalogLinear",
    "AnalogConv2d",
    "deploy",
    "age",
    "analog_arrays",
    "program_update",
    "configure",
    "hardware_weights",
]

_READ_FIELDS = ("read_noise_scale", "drift_compensation", "read_sampler")
_STATE_BUFFERS = PCMState._fields


def _array_generator(seed: int, index: int) -> torch.Generator:
    """The generator of the ``index``-th array of a deployment (a seed is a chip)."""
    value = (int(seed) * 1_000_003 + 7919 * (index + 1)) % (2**63 - 1)
    return torch.Generator().manual_seed(value)


class PCMArray(nn.Module):
    """One weight tensor held by differential PCM pairs: device state (buffers), clock, reads, updates.

    ``read()`` returns one noisy read of the weights at the current clock (no gradient). Called as a
    module, ``array(w_digital)`` returns the current read with the gradient passed straight through to
    ``w_digital`` (the parametrization of the spiking layers uses this)."""

    def __init__(
        self,
        weight: torch.Tensor,
        params: PCMParameters = pcm.DEFAULT,
        *,
        generator: torch.Generator | None = None,
        label: str = "weight",
        t: float = 0.0,
    ) -> None:
        super().__init__()
        pcm.validate_parameters(params)
        self.params = params
        self.label = label
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        state = pcm.program(weight.detach(), params, self.generator, t=t)
        for name, value in state._asdict().items():
            self.register_buffer(name, value)
        self.register_buffer("clock", torch.tensor(float(t), dtype=torch.float64))
        self.register_buffer("writes", torch.zeros((), dtype=torch.int64))
        # Derived from the state and the clock (recomputed by refresh(), not saved).
        self.register_buffer("w_mean", torch.empty(0), persistent=False)
        self.register_buffer("w_std", torch.empty(0), persistent=False)
        self.register_buffer("noise_pool", torch.empty(0), persistent=False)
        self._current: torch.Tensor | None = None
        self._moments: pcm.DeviceMoments | None = None
        self.register_load_state_dict_post_hook(lambda module, _keys: module.refresh())
        self.refresh()

    # -- state -----------------------------------------------------------------------------------------
    def state(self) -> PCMState:
        return PCMState(*(getattr(self, name) for name in _STATE_BUFFERS))

    def _set_state(self, state: PCMState) -> None:
        for name, value in state._asdict().items():
            setattr(self, name, value)

    @property
    def w_max(self) -> float:
        """The weight that maps to ``g_max`` (the clipping range of updates)."""
        return self.params.g_max / float(self.scale)

    @property
    def devices(self) -> int:
        """Number of PCM devices: two per weight."""
        return 2 * self.target.numel()

    def refresh(self) -> None:
        """Recompute the drifted, compensated weights and the read-noise std at the current clock."""
        mean, std = pcm.weight_moments(self.state(), float(self.clock), self.params)
        self.w_mean = mean
        read_noise = self.params.read_noise_scale > 0.0
        self.w_std = std if read_noise else torch.empty(0, dtype=mean.dtype, device=mean.device)
        self._moments = None  # the per-device moments of the "exact" sampler, computed at its first read
        n = mean.numel()
        if read_noise and self.params.read_sampler == "pool":
            pool = torch.randn(2 * n, generator=self.generator, dtype=mean.dtype)
            self.noise_pool = pool.to(mean.device)
        else:
            self.noise_pool = torch.empty(0, dtype=mean.dtype, device=mean.device)

    def age(self, t: float) -> None:
        """Move the clock to ``t`` seconds (since deployment); ``ValueError`` if before any programming."""
        try:
            pcm.check_time(self.state(), t)
        except ValueError as err:
            raise ValueError(f"{self.label}: {err}") from None
        self.clock.fill_(float(t))
        self.refresh()

    def configure(self, params: PCMParameters) -> None:
        """Switch read-side settings (read noise, compensation, sampler) of the programmed devices."""
        pcm.validate_parameters(params)
        fixed = [f for f in PCMParameters._fields if f not in _READ_FIELDS]
        changed = [f for f in fixed if getattr(params, f) != getattr(self.params, f)]
        if changed:
            raise ValueError(
                f"{self.label}: {', '.join(changed)} belong to the programmed devices and cannot change "
                f"after deployment (changeable: {', '.join(_READ_FIELDS)}); deploy again instead"
            )
        self.params = params
        self.refresh()

    # -- reads -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def read(self) -> torch.Tensor:
        """One read of the weights at the current clock (fresh read noise; the pair's devices combined)."""
        p = self.params
        if p.read_noise_scale == 0.0:
            return self.w_mean
        if p.read_sampler == "exact":
            if self._moments is None or self._moments.alpha.device != self.target.device:
                self._moments = pcm.device_moments(self.state(), float(self.clock), p)
            return pcm.read_from_moments(self.state(), self._moments, p, self.generator)
        n = self.w_mean.numel()
        if p.read_sampler == "pool":
            start = int(torch.randint(0, n + 1, (1,), generator=self.generator))
            eps = self.noise_pool[start : start + n].view(self.w_mean.shape)
        else:
            eps = torch.randn(self.w_mean.shape, generator=self.generator, dtype=self.w_mean.dtype)
            eps = eps.to(self.w_mean.device)
        return torch.addcmul(self.w_mean, self.w_std, eps)

    def begin_read(self) -> None:
        """Fix one read for the accesses of one layer call (a spiking layer reads its weights once)."""
        self._current = self.read()

    def end_read(self) -> None:
        self._current = None

    def forward(self, digital: torch.Tensor) -> torch.Tensor:
        w = self._current if self._current is not None else self.read()
        if torch.is_grad_enabled() and digital.requires_grad:
            return digital + (w - digital).detach()  # straight through the device model
        return w

    # -- on-chip update --------------------------------------------------------------------------------
    @torch.no_grad()
    def update(
        self, delta: torch.Tensor, *, rounding: str = "stochastic", generator: torch.Generator | None = None
    ) -> int:
        """Write ``target + Q(delta)`` (clipped to the range) at the current clock; returns the device writes.

        ``Q`` rounds to the device grid (``rounding="stochastic"`` or ``"nearest"``) when the devices are
        quantised (``weight_bits``); analog devices take ``delta`` as is. Devices whose conductance target
        does not change are not touched."""
        if rounding not in ("stochastic", "nearest"):
            raise ValueError(f"{self.label}: rounding must be 'stochastic' or 'nearest', got {rounding!r}")
        if not isinstance(delta, torch.Tensor) or delta.shape != self.target.shape:
            shape = tuple(delta.shape) if isinstance(delta, torch.Tensor) else type(delta).__name__
            raise ValueError(f"{self.label}: update must have shape {tuple(self.target.shape)}, got {shape}")
        _validate.finite_tensor(f"update of {self.label}", delta)
        delta = delta.detach().to(self.target.device, self.target.dtype)
        w_max = self.w_max
        g = generator if generator is not None else self.generator
        if self.params.weight_bits is not None:
            step = pcm.quantisation_step(w_max, self.params.weight_bits)
            dq = pcm.quantise(delta, step, stochastic=rounding == "stochastic", generator=g)
            # In integer grid levels, so that a device whose level does not move keeps its exact target.
            top = 2**self.params.weight_bits - 1
            level = torch.round(self.target / step)
            new_level = (level + torch.round(dq / step)).clamp(-top, top)
            new = torch.where(new_level == level, self.target, new_level * step)
        else:
            new = torch.where(delta == 0, self.target, (self.target + delta).clamp(-w_max, w_max))
        state, writes = pcm.reprogram(self.state(), new, self.params, g, float(self.clock))
        self._set_state(state)
        self.writes += writes
        self.refresh()
        return writes

    def extra_repr(self) -> str:
        p = self.params
        return (
            f"{self.label}: {tuple(self.target.shape)}, g_max={p.g_max} uS, w_max={self.w_max:.4g}, "
            f"bits={p.weight_bits}, t={float(self.clock):g} s, sampler={p.read_sampler}"
        )


# -- layers ---------------------------------------------------------------------------------------------


def _check_input(name: str, x: torch.Tensor, rank: tuple[int, ...], features: int, dim: int, layer) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() not in rank or x.shape[dim] != features:
        raise ValueError(
            f"{name} must have rank {'/'.join(map(str, rank))} with {features} features in dim {dim}, "
            f"got shape {tuple(x.shape)}"
        )
    _validate.same_device_dtype(name, x, "weight", layer.weight)
    _validate.finite_tensor(name, x)


class AnalogLinear(nn.Module):
    """``y = x W_read^T + b`` with ``W`` on PCM pairs (:class:`PCMArray` ``array``) and a digital bias.

    ``weight`` holds the digital weights the devices are programmed to (kept equal to the targets); the
    output reads the devices. Build with :meth:`from_linear` or by :func:`deploy`."""

    families = {"weight": WEIGHTS, "bias": BIASES}

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        device_model: PCMParameters = pcm.DEFAULT,
        generator: torch.Generator | None = None,
        weight: torch.Tensor | None = None,
        label: str = "weight",
    ) -> None:
        super().__init__()
        _validate.positive_int("in_features", in_features)
        _validate.positive_int("out_features", out_features)
        pcm.validate_parameters(device_model)
        self.in_features, self.out_features = in_features, out_features
        if weight is None:
            ref = nn.Linear(in_features, out_features, bias=False)
            if generator is not None:
                bound = 1.0 / math.sqrt(in_features)
                ref.weight.data = (torch.rand(out_features, in_features, generator=generator) * 2 - 1) * bound
            weight = ref.weight.detach()
        if tuple(weight.shape) != (out_features, in_features):
            raise ValueError(
                f"weight must have shape {(out_features, in_features)}, got {tuple(weight.shape)}"
            )
        self.array = PCMArray(weight, device_model, generator=generator, label=label)
        self.weight = nn.Parameter(self.array.target.clone())
        self.bias = (
            nn.Parameter(torch.zeros(out_features, dtype=weight.dtype, device=weight.device))
            if bias
            else None
        )

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        device_model: PCMParameters = pcm.DEFAULT,
        *,
        generator: torch.Generator | None = None,
        label: str = "weight",
    ) -> AnalogLinear:
        """The hardware version of ``linear``: its weights programmed, its bias kept digital."""
        layer = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            device_model=device_model,
            generator=generator,
            weight=linear.weight.detach(),
            label=label,
        )
        if linear.bias is not None:
            layer.bias.data.copy_(linear.bias.detach())
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input("x", x, tuple(range(1, 9)), self.in_features, -1, self)
        return F.linear(x, self.array(self.weight), self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
        )


class AnalogConv2d(nn.Module):
    """``nn.Conv2d`` (zero padding) with its kernel on PCM pairs and a digital bias (see AnalogLinear)."""

    families = {"weight": WEIGHTS, "bias": BIASES}

    def __init__(
        self,
        conv: nn.Conv2d,
        device_model: PCMParameters = pcm.DEFAULT,
        *,
        generator: torch.Generator | None = None,
        label: str = "weight",
    ) -> None:
        super().__init__()
        if not isinstance(conv, nn.Conv2d):
            raise ValueError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
        if conv.padding_mode != "zeros":
            raise ValueError(
                f"{label}: padding_mode {conv.padding_mode!r} is not supported on the crossbar (only 'zeros')"
            )
        if isinstance(conv.padding, str):
            raise ValueError(f"{label}: string padding {conv.padding!r} is not supported; give the sizes")
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride, self.padding = conv.kernel_size, conv.stride, conv.padding
        self.dilation, self.groups = conv.dilation, conv.groups
        self.array = PCMArray(conv.weight.detach(), device_model, generator=generator, label=label)
        self.weight = nn.Parameter(self.array.target.clone())
        self.bias = nn.Parameter(conv.bias.detach().clone()) if conv.bias is not None else None

    @classmethod
    def from_conv(
        cls,
        conv: nn.Conv2d,
        device_model: PCMParameters = pcm.DEFAULT,
        *,
        generator: torch.Generator | None = None,
        label: str = "weight",
    ) -> AnalogConv2d:
        return cls(conv, device_model, generator=generator, label=label)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input("x", x, (3, 4), self.in_channels, -3, self)
        w = self.array(self.weight)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
            f"bias={self.bias is not None}"
        )


# -- spiking layers: parametrized weights ----------------------------------------------------------------


def _begin_reads(module: nn.Module, _args) -> None:
    for plist in module.parametrizations.values():
        for p in plist:
            if isinstance(p, PCMArray):
                p.begin_read()


def _end_reads(module: nn.Module, _args, _out) -> None:
    for plist in module.parametrizations.values():
        for p in plist:
            if isinstance(p, PCMArray):
                p.end_read()


def _family_weights(module: nn.Module) -> list[str]:
    """Names of the ``weights``-family parameters a module declares (its own, not its children's)."""
    names = []
    for name, family in getattr(type(module), "families", {}).items():
        if family == WEIGHTS and isinstance(module._parameters.get(name), nn.Parameter):
            names.append(name)
    return names


def _supported(module: nn.Module) -> bool:
    if isinstance(module, (AnalogLinear, AnalogConv2d, PCMArray)):
        return False
    # Exact types: a subclass may use its weight in its own way (nn.MultiheadAttention's out_proj reads
    # out_proj.weight directly), so replacing it by an analog layer would silently stay digital.
    return type(module) in (nn.Linear, nn.Conv2d) or bool(_family_weights(module))


def hardware_weights(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The weight tensors :func:`deploy` would put on PCM: ``(qualified name, parameter)`` of every
    ``nn.Linear``/``nn.Conv2d`` weight and every ``weights``-family parameter of the other layers."""
    out = []
    for prefix, module in model.named_modules():
        if type(module) in (nn.Linear, nn.Conv2d) or isinstance(module, (AnalogLinear, AnalogConv2d)):
            out.append((f"{prefix}.weight" if prefix else "weight", module.weight))
        elif not isinstance(module, PCMArray):
            for name in _family_weights(module):
                out.append((f"{prefix}.{name}" if prefix else name, getattr(module, name)))
    return out


def deploy(
    model: nn.Module,
    device_model: PCMParameters = pcm.DEFAULT,
    *,
    layers: Iterable[str] | None = None,
    seed: int = 0,
) -> nn.Module:
    """A copy of ``model`` with its weights programmed on simulated PCM crossbars at time 0.

    ``layers``: qualified module names (as in ``named_modules``) to deploy; ``None`` deploys every
    ``nn.Linear``, ``nn.Conv2d`` and every layer with ``weights``-family parameters (the spiking layers),
    and leaves the rest digital. Naming a layer the device cannot hold raises ``ValueError`` naming it.
    ``seed`` fixes every random draw of this deployment (programming noise, drift exponents, reads):
    one seed is one chip. The original model is not changed."""
    pcm.validate_parameters(device_model)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    modules = dict(model.named_modules())
    if layers is None:
        names = [n for n, m in modules.items() if _supported(m)]
    else:
        if isinstance(layers, str):
            raise ValueError(f"layers must be a list of layer names, got the string {layers!r}")
        names = list(layers)
        for name in names:
            if name not in modules:
                known = ", ".join(repr(n) for n in modules if n) or "(none)"
                raise ValueError(f"layers: the model has no layer named {name!r}; its layers: {known}")
            if not _supported(modules[name]):
                raise ValueError(
                    f"layer {name!r} ({type(modules[name]).__name__}) cannot be held by the PCM device "
                    "model; supported: nn.Linear, nn.Conv2d and layers with weights-family parameters "
                    "(RecurrentSpikingLayer, FeedForwardSpikingLayer, LeakyReadout)"
                )
    hw = copy.deepcopy(model)
    hw_modules = dict(hw.named_modules())
    for index, name in enumerate(sorted(names)):
        module = hw_modules[name]
        generator = _array_generator(seed, index)
        if type(module) is nn.Linear:
            new = AnalogLinear.from_linear(
                module, device_model, generator=generator, label=_join(name, "weight")
            )
            _replace(hw, name, new)
        elif type(module) is nn.Conv2d:
            new = AnalogConv2d.from_conv(
                module, device_model, generator=generator, label=_join(name, "weight")
            )
            _replace(hw, name, new)
        else:
            for k, param_name in enumerate(_family_weights(module)):
                g = generator if k == 0 else _array_generator(seed, 10_000 * (index + 1) + k)
                array = PCMArray(
                    getattr(module, param_name), device_model, generator=g, label=_join(name, param_name)
                )
                with torch.no_grad():
                    getattr(module, param_name).copy_(array.target)
                parametrize.register_parametrization(module, param_name, array, unsafe=True)
            module.register_forward_pre_hook(_begin_reads)
            module.register_forward_hook(_end_reads)
    return hw


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    if not name:
        raise ValueError(
            "deploy the layers of a model, not a bare nn.Linear/nn.Conv2d: wrap it in nn.Sequential"
        )
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, new)


def _tiles(model: nn.Module) -> dict[str, tuple[PCMArray, nn.Parameter]]:
    """Every array of a deployed model by the qualified name of its weight, with the digital parameter."""
    out: dict[str, tuple[PCMArray, nn.Parameter]] = {}
    for prefix, module in model.named_modules():
        if isinstance(module, (AnalogLinear, AnalogConv2d)):
            out[_join(prefix, "weight")] = (module.array, module.weight)
        elif parametrize.is_parametrized(module):
            for name, plist in module.parametrizations.items():
                for p in plist:
                    if isinstance(p, PCMArray):
                        out[_join(prefix, name)] = (p, plist.original)
    return out


def analog_arrays(model: nn.Module) -> dict[str, PCMArray]:
    """The :class:`PCMArray` of every deployed weight, by qualified weight name (``"fc1.weight"``)."""
    return {name: array for name, (array, _) in _tiles(model).items()}


def _arrays_or_raise(model: nn.Module) -> dict[str, tuple[PCMArray, nn.Parameter]]:
    tiles = _tiles(model)
    if not tiles:
        raise ValueError("the model holds no PCM arrays: deploy(model, ...) it first")
    return tiles


def age(model: nn.Module, t: float) -> nn.Module:
    """Move the clock of every array of ``model`` to ``t`` seconds after deployment; returns ``model``.

    ``t`` must not lie before the programming of any device (an on-chip update at time u programs
    devices at u); the error names the layer."""
    tiles = _arrays_or_raise(model)
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
        raise ValueError(f"t must be a finite number of seconds, got {t!r}")
    for array, _ in tiles.values():  # check all first: a bad t changes nothing
        try:
            pcm.check_time(array.state(), float(t))
        except ValueError as err:
            raise ValueError(f"{array.label}: {err}") from None
    for array, _ in tiles.values():
        array.age(float(t))
    return model


def configure(model: nn.Module, **changes) -> nn.Module:
    """Change read-side settings of every array (``read_noise_scale``, ``drift_compensation``,
    ``read_sampler``) without re-programming: the same chip read another way. Returns ``model``."""
    bad = [k for k in changes if k not in _READ_FIELDS]
    if bad:
        raise ValueError(
            f"configure: {', '.join(bad)} cannot change after deployment; changeable: {_READ_FIELDS}"
        )
    for array, _ in _arrays_or_raise(model).values():
        array.configure(array.params._replace(**changes))
    return model


def program_update(
    model: nn.Module,
    deltas: Mapping[str, torch.Tensor],
    *,
    rounding: str = "stochastic",
    generator: torch.Generator | None = None,
) -> dict[str, int]:
    """Write weight updates on chip: ``deltas`` maps weight names (as :func:`analog_arrays`) to updates.

    Each update is quantised to the device grid, only changed devices are re-programmed at the current
    clock, and the digital weights follow the new targets. Returns the device writes per weight."""
    tiles = _arrays_or_raise(model)
    unknown = [k for k in deltas if k not in tiles]
    if unknown:
        raise ValueError(f"program_update: no deployed weight named {unknown}; deployed: {sorted(tiles)}")
    writes = {}
    for name, delta in deltas.items():
        array, digital = tiles[name]
        writes[name] = array.update(delta, rounding=rounding, generator=generator)
        with torch.no_grad():
            digital.copy_(array.target)
    return writes
