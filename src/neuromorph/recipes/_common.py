"""Shared machinery of the recipes: configs with ``--set`` overrides, the run context, and turning a
model + optimizer into checkpoint tensors and back (so that ``--resume`` continues bit for bit)."""

from __future__ import annotations

import dataclasses
import sys
import time
import types
import typing
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

import torch
import yaml
from tqdm.auto import tqdm

from ..distributed import DistInfo
from ..runs import Run, StopFlag

__all__ = [
    "Context",
    "apply_overrides",
    "config_to_dict",
    "config_from_dict",
    "valid_keys",
    "module_tensors",
    "load_module_tensors",
    "optimizer_tensors",
    "load_optimizer",
    "TrainingCheckpoints",
    "progress_bar",
    "seeded_generator",
]


@dataclass
class Context:
    """What a recipe's ``run`` gets besides its config: the run directory, the distributed setup, the
    device, whether to show a progress bar, the stop flag set by SIGTERM/Ctrl-C, and the checkpoint
    to resume from (``None`` for a fresh run)."""

    run: Run
    dist: DistInfo
    device: torch.device
    progress: bool
    stop: StopFlag
    resume: tuple[dict[str, torch.Tensor], dict] | None = None


# -- configs ----------------------------------------------------------------------------------------


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def valid_keys(cfg) -> list[str]:
    """Dotted names of every settable field (nested dataclasses flattened: ``data.root``)."""
    keys = []
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        keys += [f"{f.name}.{k}" for k in valid_keys(value)] if is_dataclass(value) else [f.name]
    return keys


def _coerce(key: str, raw: str, hint: Any, current: Any) -> Any:
    """Parse ``raw`` as a YAML scalar and check it against the field's type hint."""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    members = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else ()
    if value is None:
        if type(None) in members:
            return None
        raise ValueError(f"--set {key}: null is not allowed here (current value {current!r})")
    base = next((m for m in members if m is not type(None)), hint) if members else hint
    if base is bool and isinstance(value, bool):
        return value
    if base is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if base is float and isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
        try:
            return float(raw)
        except ValueError:
            pass
    if base is str:
        return raw
    if typing.get_origin(base) is tuple:
        items = value if isinstance(value, list) else [v.strip() for v in raw.split(",") if v.strip()]
        return tuple(str(v) for v in items)
    name = getattr(base, "__name__", str(base))
    raise ValueError(f"--set {key}={raw!r}: expected a value of type {name} (current value {current!r})")


def apply_overrides(cfg, sets: list[str]):
    """Return a copy of ``cfg`` with ``key=value`` overrides applied (values parsed as YAML scalars and
    checked against the field's type). Unknown keys raise ``ValueError`` listing the valid ones."""
    for item in sets:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        cfg = _set_path(cfg, key.split("."), key, raw)
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


def _set_path(cfg, parts: list[str], key: str, raw: str):
    names = {f.name for f in fields(cfg)}
    if parts[0] not in names:
        raise ValueError(f"--set: unknown key {key!r}; valid keys: {', '.join(valid_keys(cfg))}")
    current = getattr(cfg, parts[0])
    if is_dataclass(current):
        if len(parts) == 1:
            raise ValueError(f"--set: {key!r} is a section; valid keys: {', '.join(valid_keys(cfg))}")
        return dataclasses.replace(cfg, **{parts[0]: _set_path(current, parts[1:], key, raw)})
    if len(parts) > 1:
        raise ValueError(f"--set: unknown key {key!r}; valid keys: {', '.join(valid_keys(cfg))}")
    hint = _hints(type(cfg))[parts[0]]
    return dataclasses.replace(cfg, **{parts[0]: _coerce(key, raw, hint, current)})


def config_to_dict(cfg) -> dict:
    """Plain nested dict (tuples become lists) for ``config.yaml``."""
    out = {}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if is_dataclass(value):
            value = config_to_dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def config_from_dict(cls, data: dict):
    """Rebuild a config dataclass from ``config_to_dict`` output (``--resume``); unknown keys are an error."""
    if not isinstance(data, dict):
        raise ValueError(f"config must be a mapping, got {type(data).__name__}")
    hints = _hints(cls)
    kwargs = {}
    names = {f.name for f in fields(cls)}
    for key, value in data.items():
        if key not in names:
            raise ValueError(f"config has an unknown key {key!r} for {cls.__name__}")
        hint = hints[key]
        if is_dataclass(hint):
            value = config_from_dict(hint, value)
        elif typing.get_origin(hint) is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


# -- checkpoints ------------------------------------------------------------------------------------


def module_tensors(prefix: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``state_dict`` with a prefix, ready for :meth:`Run.save_checkpoint`."""
    return {f"{prefix}{k}": v for k, v in module.state_dict().items()}


def load_module_tensors(prefix: str, module: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    module.load_state_dict(state, strict=True)


def optimizer_tensors(prefix: str, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer's state into tensors (moments, steps) and a JSON-able rest (param groups)."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, entry in sd["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}{idx}.{name}"] = value
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer(
    prefix: str, optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict
):
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith(prefix):
            idx, name = key[len(prefix) :].split(".", 1)
            state.setdefault(int(idx), {})[name] = value
    for key, value in meta.get("scalars", {}).items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


class TrainingCheckpoints:
    """Resume and checkpoints of a training loop over one module and one optimizer.

    On a resumed run the module and optimizer are loaded from ``ctx.resume``, ``start`` is the iteration
    to continue from and the metrics after the saved ``step`` are dropped. ``elapsed()`` is the training
    time across resumes; ``save(next_iter, step=...)`` writes the module (``net.``) and optimizer
    (``opt.``) tensors with ``step``, ``iteration``, ``seconds`` and ``optimizer`` in the meta."""

    def __init__(self, ctx: Context, module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.ctx, self.module, self.optimizer = ctx, module, optimizer
        self.start, self.step, self._before = 0, 0, 0.0
        if ctx.resume is not None:
            tensors, meta = ctx.resume
            load_module_tensors("net.", module, tensors)
            load_optimizer("opt.", optimizer, tensors, meta["optimizer"])
            self.start, self.step, self._before = meta["iteration"], meta["step"], meta["seconds"]
            ctx.run.truncate_metrics(self.step)
        self._t0 = time.perf_counter()

    def elapsed(self) -> float:
        """Seconds of this run, the time before a resume included."""
        return self._before + time.perf_counter() - self._t0

    def save(self, next_iter: int, *, step: int | None = None) -> None:
        """Checkpoint before iteration ``next_iter`` (``step``: the last logged step, default
        ``next_iter``)."""
        opt_t, opt_meta = optimizer_tensors("opt.", self.optimizer)
        self.ctx.run.save_checkpoint(
            {**module_tensors("net.", self.module), **opt_t},
            {
                "step": next_iter if step is None else step,
                "iteration": next_iter,
                "seconds": self.elapsed(),
                "optimizer": opt_meta,
            },
        )


# -- misc -------------------------------------------------------------------------------------------


def progress_bar(ctx: Context, *, total: int, initial: int = 0, desc: str = ""):
    """A tqdm bar on stderr, shown only on the main rank and when progress is on."""
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        disable=not (ctx.progress and ctx.dist.is_main),
        file=sys.stderr,
        dynamic_ncols=True,
        leave=True,
    )


def seeded_generator(*seeds: int) -> torch.Generator:
    """A CPU generator seeded from a tuple of ints (the run seed and the role of the draw)."""
    value = 0
    for s in seeds:
        value = (value * 1_000_003 + int(s)) % (2**63 - 1)
    return torch.Generator().manual_seed(value)
