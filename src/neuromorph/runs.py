"""Run directories: atomic files, safetensors checkpoints, resume and the metrics log.

A run directory holds::

    config.yaml                      recipe name, config, created time, versions, host
    metrics.jsonl                    one JSON object per logged step (append-only, flushed per line)
    checkpoint.json                  the commit point: step, user meta, name + sha256 of the tensor file
    checkpoint-<step>-<sha>.safetensors   the tensors that checkpoint.json names
    results.json                     headline numbers
    *.png, report.html               plots and the self-contained report (see :mod:`neuromorph.report`)
    tb/                              TensorBoard events

Every file except the two append-only logs (``metrics.jsonl`` and the TensorBoard events) is written
through a temporary file in the same directory, fsynced and moved into place with ``os.replace``, so a
reader never sees a half-written file. A checkpoint is saved in two steps: first a new, content-named
tensor file, then ``checkpoint.json`` naming it and its sha256. A process killed between the two steps
leaves the previous ``checkpoint.json`` pointing to the previous (still present) tensor file; older tensor
files are deleted only after the new ``checkpoint.json`` is in place.

Nothing here prints; errors are ``ValueError`` with the argument, the value and what is allowed.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import math
import os
import pathlib
import platform
import re
import secrets
import signal
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import yaml

__all__ = [
    "Run",
    "StopFlag",
    "StopRequested",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "graceful_stop",
    "read_metrics",
    "to_jsonable",
]

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_FILE = "checkpoint.json"
RESULTS_FILE = "results.json"
TB_DIR = "tb"
_CKPT_FORMAT = "neuromorph-checkpoint"
_CKPT_VERSION = 1
_CKPT_TENSORS_RE = re.compile(r"^checkpoint-\d+-[0-9a-f]{16}\.safetensors$")
_RECIPE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_TMP_SUFFIX = ".tmp"


# --------------------------------------------------------------------------------------------------
# atomic writes


def _fsync_dir(directory: pathlib.Path) -> None:
    """Best-effort fsync of a directory so that a rename in it is durable (no-op where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically.

    The bytes go to a temporary file ``.<name>.<random>.tmp`` in the same directory, which is flushed,
    fsynced and then moved over ``path`` with ``os.replace``: readers see either the old file or the new
    one, never a mix. On any error (or KeyboardInterrupt) the temporary file is removed. The file gets the
    usual permissions (0o666 minus the umask). The parent directory must exist.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ValueError(f"data must be bytes, got {type(data).__name__}")
    path = pathlib.Path(path)
    if path.name in ("", ".", ".."):
        raise ValueError(f"path must name a file, got {str(path)!r}")
    directory = path.parent
    if not directory.is_dir():
        raise ValueError(f"path {str(path)!r}: the directory {str(directory)!r} does not exist")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = directory / f".{path.name}.{secrets.token_hex(6)}{_TMP_SUFFIX}"
        try:
            fd = os.open(tmp, flags, 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8, newlines kept as is) to ``path`` atomically; see :func:`atomic_write_bytes`."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    atomic_write_bytes(path, text.encode("utf-8"))


def to_jsonable(obj: Any, *, nonfinite_to_none: bool = True, _where: str = "obj") -> Any:
    """Return a copy of ``obj`` made of plain JSON types.

    Rules: dicts (string keys only) and lists stay, tuples become lists, numpy scalars and one-element
    torch tensors / numpy arrays become Python numbers, ``pathlib.Path`` becomes ``str``; with
    ``nonfinite_to_none`` (the default) NaN and +-inf become ``None`` (JSON ``null``), so every file we
    write is strict JSON. Anything else raises ``ValueError`` naming where in ``obj`` it sits.
    """
    if obj is None or isinstance(obj, bool):
        return obj
    if isinstance(obj, str):
        return str(obj)  # plain str also for subclasses such as torch.__version__
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        if nonfinite_to_none and not math.isfinite(obj):
            return None
        return float(obj)
    if isinstance(obj, Mapping):
        out = {}
        for key, value in obj.items():
            if not isinstance(key, str):
                raise ValueError(f"{_where} has a key {key!r} of type {type(key).__name__}; keys must be str")
            out[key] = to_jsonable(value, nonfinite_to_none=nonfinite_to_none, _where=f"{_where}[{key!r}]")
        return out
    if isinstance(obj, list | tuple):
        return [
            to_jsonable(v, nonfinite_to_none=nonfinite_to_none, _where=f"{_where}[{i}]")
            for i, v in enumerate(obj)
        ]
    if isinstance(obj, pathlib.PurePath):
        return str(obj)
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return to_jsonable(obj.item(), nonfinite_to_none=nonfinite_to_none, _where=_where)
    item = getattr(obj, "item", None)  # numpy scalars and one-element arrays
    if callable(item) and getattr(obj, "size", None) == 1 and type(obj).__module__.startswith("numpy"):
        return to_jsonable(item(), nonfinite_to_none=nonfinite_to_none, _where=_where)
    raise ValueError(
        f"{_where} = {obj!r} has type {type(obj).__name__}, which cannot be stored as JSON/YAML "
        "(allowed: dict with str keys, list, tuple, str, int, float, bool, None, scalar tensors)"
    )


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as strict JSON (indent=2, sorted keys, trailing newline) to ``path`` atomically.

    NaN and +-inf are written as ``null`` (see :func:`to_jsonable` for the full conversion rules).
    """
    text = json.dumps(to_jsonable(obj), indent=2, sort_keys=True, allow_nan=False)
    atomic_write_text(path, text + "\n")


# --------------------------------------------------------------------------------------------------
# metrics log


def _parse_metrics_lines(raw: bytes, path: pathlib.Path) -> tuple[list[dict], bytes]:
    """Parse metrics.jsonl bytes into (records, the bytes a clean file would hold).

    The last line may lack its newline: if it is a complete JSON object it is kept (and the clean bytes
    get the newline), otherwise it is a torn write and is skipped. An invalid line elsewhere raises.
    """
    records: list[dict] = []
    lines = raw.split(b"\n")
    torn = lines.pop()  # b"" when raw ends with a newline
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as err:
            raise ValueError(f"{path}: line {i + 1} is not valid JSON ({err})") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{path}: line {i + 1} is not a JSON object")
        records.append(rec)
    clean = raw[: len(raw) - len(torn)]
    if torn.strip():
        try:
            rec = json.loads(torn)
        except ValueError:
            rec = None
        if isinstance(rec, dict):
            records.append(rec)
            clean = raw + b"\n"
    return records, clean


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Parse a ``metrics.jsonl`` file into a list of dicts (``[]`` if the file does not exist).

    A torn last line (left by a process killed while writing) is skipped; a corrupt line in the middle
    raises ``ValueError`` naming the file and line. ``null`` values (non-finite metrics) come back as None.
    """
    path = pathlib.Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    return _parse_metrics_lines(raw, path)[0]


# --------------------------------------------------------------------------------------------------
# the run


def _validate_recipe(recipe: Any) -> str:
    if not isinstance(recipe, str) or not _RECIPE_RE.match(recipe):
        raise ValueError(
            f"recipe must be a non-empty name of letters, digits, '-', '_' or '.', got {recipe!r}"
        )
    return recipe


def _to_yamlable(obj: Any, where: str) -> Any:
    # YAML can hold NaN/inf, so keep them in the config.
    return to_jsonable(obj, nonfinite_to_none=False, _where=where)


def _sha256_file(path: pathlib.Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _holds_run(directory: pathlib.Path) -> bool:
    if (directory / CONFIG_FILE).exists() or (directory / CHECKPOINT_FILE).exists():
        return True
    return any(_CKPT_TENSORS_RE.match(p.name) for p in directory.iterdir())


class Run:
    """One run directory and the files in it.

    Make one with :meth:`Run.create` (a new run) or :meth:`Run.open` (``--resume``), not with the
    constructor. With ``is_writer=False`` (non-zero ranks of a DDP job) the object reads but never
    writes: :meth:`log`, :meth:`save_checkpoint`, :meth:`truncate_metrics` and :meth:`write_results` are
    no-ops. Use it as a context manager (or call :meth:`close`) to flush the metrics and TensorBoard logs.

    Attributes: ``dir`` (pathlib.Path), ``recipe`` (str), ``config`` (plain dict), ``is_writer`` (bool).
    """

    def __init__(self, dir: str | os.PathLike, recipe: str, config: dict, *, is_writer: bool = True):
        self.dir = pathlib.Path(dir)
        self.recipe = _validate_recipe(recipe)
        if not isinstance(config, Mapping):
            raise ValueError(f"config must be a dict, got {type(config).__name__}")
        self.config = dict(config)
        self.is_writer = bool(is_writer)
        self._metrics_fh = None
        self._tb = None
        self._tb_purge_step: int | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Run(dir={str(self.dir)!r}, recipe={self.recipe!r}, is_writer={self.is_writer})"

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- creation ------------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        recipe: str,
        config: dict,
        out: str | os.PathLike | None = None,
        root: str | os.PathLike = "runs",
        *,
        is_writer: bool = True,
    ) -> Run:
        """Start a new run directory and write its ``config.yaml``.

        ``out=None`` makes ``root/RECIPE-YYYYmmdd-HHMMSS`` (local time), adding ``-2``, ``-3``, ... when that
        name is taken; ``out`` given uses exactly that directory (created if needed; an existing empty
        directory, or one holding no run, is fine). If ``out`` already holds a run (a ``config.yaml`` or a
        checkpoint) this raises ``ValueError`` and changes nothing.

        ``config.yaml`` records the recipe name, the config (a plain dict, nested dicts allowed; tuples
        are stored as lists), the created time, the neuromorph, torch and Python versions and the host.

        With ``is_writer=False`` nothing is created or checked on disk; with ``out=None`` the directory
        name is then computed from the current time only, so a DDP job should pass rank 0's directory to
        the other ranks as ``out`` (see :func:`neuromorph.distributed.broadcast_object`).
        """
        recipe = _validate_recipe(recipe)
        if not isinstance(config, Mapping):
            raise ValueError(f"config must be a dict, got {type(config).__name__}")
        config = _to_yamlable(dict(config), "config")
        if out is not None and not isinstance(out, str | os.PathLike):
            raise ValueError(f"out must be a path or None, got {out!r}")
        if not isinstance(root, str | os.PathLike):
            raise ValueError(f"root must be a path, got {root!r}")
        now = _dt.datetime.now().astimezone()
        if out is None:
            base = pathlib.Path(root) / f"{recipe}-{now.strftime('%Y%m%d-%H%M%S')}"
            if not is_writer:
                return cls(base, recipe, config, is_writer=False)
            base.parent.mkdir(parents=True, exist_ok=True)
            n = 1
            while True:
                directory = base if n == 1 else base.with_name(f"{base.name}-{n}")
                try:
                    directory.mkdir()
                    break
                except FileExistsError:
                    n += 1
        else:
            directory = pathlib.Path(out)
            if not is_writer:
                return cls(directory, recipe, config, is_writer=False)
            if directory.exists():
                if not directory.is_dir():
                    raise ValueError(f"--out {directory} exists and is not a directory; choose another --out")
                if _holds_run(directory):
                    raise ValueError(
                        f"--out {directory} already holds a run; use --resume {directory} to continue it "
                        "or choose another --out"
                    )
            else:
                directory.mkdir(parents=True)
        from . import __version__

        info = {
            "recipe": recipe,
            "config": config,
            "created": now.isoformat(timespec="seconds"),
            "neuromorph_version": __version__,
            "torch_version": str(torch.__version__),
            "python_version": platform.python_version(),
            "host": socket.gethostname(),
        }
        atomic_write_text(directory / CONFIG_FILE, yaml.safe_dump(info, sort_keys=False))
        return cls(directory, recipe, config, is_writer=True)

    @classmethod
    def open(cls, path: str | os.PathLike, *, is_writer: bool = True) -> Run:
        """Open an existing run to resume it (``--resume PATH``).

        ``path`` must be a directory with a readable ``config.yaml`` that names a recipe and a config, and
        a loadable checkpoint: ``checkpoint.json`` naming a tensor file that exists and whose sha256 and
        safetensors header match. Otherwise raises ``ValueError`` naming ``--resume``, the path and what is
        missing or corrupt. Opening never modifies the directory (also not when it fails).
        """
        if not isinstance(path, str | os.PathLike):
            raise ValueError(f"--resume must be a path, got {path!r}")
        directory = pathlib.Path(path)

        def fail(problem: str) -> ValueError:
            return ValueError(f"--resume {directory}: {problem}")

        if not directory.exists():
            raise fail("no such directory")
        if not directory.is_dir():
            raise fail("is not a directory")
        cfg_path = directory / CONFIG_FILE
        if not cfg_path.is_file():
            raise fail(f"{CONFIG_FILE} is missing (not a neuromorph run directory)")
        try:
            info = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            raise fail(f"{CONFIG_FILE} is unreadable or corrupt ({err})") from None
        if not isinstance(info, dict):
            raise fail(f"{CONFIG_FILE} is corrupt (expected a mapping, got {type(info).__name__})")
        recipe = info.get("recipe")
        if not isinstance(recipe, str) or not _RECIPE_RE.match(recipe):
            raise fail(f"{CONFIG_FILE} does not name a recipe (recipe: {recipe!r})")
        config = info.get("config", {})
        if config is None:
            config = {}
        if not isinstance(config, dict):
            raise fail(f"{CONFIG_FILE} has a config that is not a mapping ({type(config).__name__})")
        run = cls(directory, recipe, config, is_writer=is_writer)
        try:
            record = run._read_checkpoint_record(verify=True)
        except ValueError as err:
            raise fail(str(err)) from None
        if record is None:
            raise fail(
                f"has no checkpoint ({CHECKPOINT_FILE} is missing): the run stopped before its first "
                "checkpoint; start it again with --out"
            )
        return run

    # ---- small helpers -------------------------------------------------------------------------

    def path(self, name: str) -> pathlib.Path:
        """Return ``dir / name`` for a relative ``name`` that stays inside the run directory."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty relative file name, got {name!r}")
        p = pathlib.PurePath(name)
        if p.is_absolute() or ".." in p.parts:
            raise ValueError(f"name must be relative and stay inside the run directory, got {name!r}")
        return self.dir / name

    def close(self) -> None:
        """Flush and close the metrics file and the TensorBoard writer (safe to call twice)."""
        with self._lock:
            if self._metrics_fh is not None:
                self._metrics_fh.close()
                self._metrics_fh = None
            if self._tb is not None:
                self._tb.flush()
                self._tb.close()
                self._tb = None

    # ---- metrics -------------------------------------------------------------------------------

    def _open_metrics(self):
        path = self.dir / METRICS_FILE
        if path.exists():
            raw = path.read_bytes()
            _, clean = _parse_metrics_lines(raw, path)
            if clean != raw:  # a torn last line from a killed process: drop it before appending
                atomic_write_bytes(path, clean)
        self._metrics_fh = open(path, "a", encoding="utf-8", newline="\n")
        return self._metrics_fh

    def _tensorboard(self):
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(
                log_dir=str(self.dir / TB_DIR), purge_step=self._tb_purge_step, flush_secs=30
            )
        return self._tb

    def log(self, step: int, **metrics: float) -> None:
        """Append ``{"step": step, **metrics, "time": unix_time}`` to ``metrics.jsonl`` and TensorBoard.

        Each line is flushed as it is written. Values must be real numbers (Python/numpy numbers or
        one-element tensors); NaN and +-inf are stored as ``null`` in the JSON log and as-is in
        TensorBoard. ``step`` and ``time`` are reserved names. No-op when not the writer.
        """
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be an int >= 0, got {step!r}")
        values: dict[str, float] = {}
        for key, value in metrics.items():
            if key in ("step", "time"):
                raise ValueError(f"metric name {key!r} is reserved; use another name")
            if isinstance(value, torch.Tensor):
                if value.numel() != 1:
                    raise ValueError(
                        f"metric {key} must be a number, got a tensor of shape {tuple(value.shape)}"
                    )
                value = value.item()
            try:
                if isinstance(value, bool | str | bytes):
                    raise TypeError
                values[key] = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"metric {key} must be a real number, got {value!r}") from None
        if not self.is_writer:
            return
        record = {"step": step, **values, "time": time.time()}
        line = json.dumps(to_jsonable(record), allow_nan=False)
        with self._lock:
            fh = self._metrics_fh or self._open_metrics()
            fh.write(line + "\n")
            fh.flush()
            tb = self._tensorboard()
            for key, value in values.items():
                tb.add_scalar(key, value, step)

    def metrics(self) -> list[dict]:
        """All records in ``metrics.jsonl`` (see :func:`read_metrics`); ``[]`` before the first log."""
        return read_metrics(self.dir / METRICS_FILE)

    def truncate_metrics(self, after_step: int) -> None:
        """Drop every ``metrics.jsonl`` record with ``step > after_step`` (and a torn last line).

        Call it when resuming from a checkpoint at ``after_step`` so the log of the resumed run equals
        the log of an uninterrupted one. The file is rewritten atomically; TensorBoard events written
        later purge the dropped steps (``purge_step``). No-op when not the writer or without a log.
        """
        if isinstance(after_step, bool) or not isinstance(after_step, int):
            raise ValueError(f"after_step must be an int, got {after_step!r}")
        if not self.is_writer:
            return
        with self._lock:
            if self._metrics_fh is not None:  # the append handle would point at the replaced file
                self._metrics_fh.close()
                self._metrics_fh = None
            if self._tb is not None:
                self._tb.close()
                self._tb = None
            self._tb_purge_step = after_step + 1
            path = self.dir / METRICS_FILE
            if not path.exists():
                return
            raw = path.read_bytes()
            records, _ = _parse_metrics_lines(raw, path)
            kept = [r for r in records if not (isinstance(r.get("step"), int) and r["step"] > after_step)]
            text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in kept)
            atomic_write_text(path, text)

    # ---- results -------------------------------------------------------------------------------

    def write_results(self, results: dict) -> None:
        """Write the headline numbers to ``results.json`` atomically (NaN/inf -> null)."""
        if not isinstance(results, Mapping):
            raise ValueError(f"results must be a dict, got {type(results).__name__}")
        results = to_jsonable(dict(results), _where="results")
        if self.is_writer:
            atomic_write_json(self.dir / RESULTS_FILE, results)

    # ---- checkpoints ---------------------------------------------------------------------------

    def save_checkpoint(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """Save a checkpoint: ``tensors`` as safetensors plus ``meta`` (JSON-able, with an int ``"step"``).

        Tensors are stored detached, contiguous, on CPU and cloned (views and shared storage are fine).
        The tensor file ``checkpoint-<step>-<sha256[:16]>.safetensors`` is written atomically first, then
        ``checkpoint.json`` (the commit point) naming it, its size and its sha256; only then are older
        tensor files and stale temporary files deleted. A kill at any moment leaves a consistent pair.
        No-op when not the writer (arguments are still validated).
        """
        from safetensors.torch import save as st_save

        if not isinstance(tensors, Mapping):
            raise ValueError(f"tensors must be a dict of str -> torch.Tensor, got {type(tensors).__name__}")
        for key, value in tensors.items():
            if not isinstance(key, str) or not key:
                raise ValueError(f"tensors keys must be non-empty str, got {key!r}")
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"tensors[{key!r}] must be a torch.Tensor, got {type(value).__name__}")
        if not isinstance(meta, Mapping):
            raise ValueError(f"meta must be a dict with an int 'step', got {type(meta).__name__}")
        step = meta.get("step")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"meta['step'] must be an int >= 0, got {step!r}")
        meta = to_jsonable(dict(meta), _where="meta")
        if not self.is_writer:
            return
        cpu = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
        data = st_save(cpu)
        sha = hashlib.sha256(data).hexdigest()
        name = f"checkpoint-{step}-{sha[:16]}.safetensors"
        atomic_write_bytes(self.dir / name, data)
        record = {
            "format": _CKPT_FORMAT,
            "version": _CKPT_VERSION,
            "step": step,
            "tensors_file": name,
            "sha256": sha,
            "size": len(data),
            "meta": meta,
            "saved": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        atomic_write_json(self.dir / CHECKPOINT_FILE, record)
        for p in self.dir.iterdir():
            stale_tensors = _CKPT_TENSORS_RE.match(p.name) and p.name != name
            stale_tmp = p.name.startswith((".checkpoint-", f".{CHECKPOINT_FILE}.")) and p.name.endswith(
                _TMP_SUFFIX
            )
            if stale_tensors or stale_tmp:
                with contextlib.suppress(OSError):
                    p.unlink()

    def _read_checkpoint_record(self, *, verify: bool) -> dict | None:
        """Read and check checkpoint.json; None if absent. Raises ValueError describing corruption."""
        ckpt = self.dir / CHECKPOINT_FILE
        if not ckpt.exists():
            return None
        try:
            record = json.loads(ckpt.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise ValueError(f"{CHECKPOINT_FILE} is unreadable or corrupt ({err})") from None
        if not isinstance(record, dict) or record.get("format") != _CKPT_FORMAT:
            raise ValueError(f"{CHECKPOINT_FILE} is not a neuromorph checkpoint record")
        name, sha, size = record.get("tensors_file"), record.get("sha256"), record.get("size")
        if not (
            isinstance(name, str)
            and _CKPT_TENSORS_RE.match(name)
            and isinstance(sha, str)
            and isinstance(size, int)
            and isinstance(record.get("step"), int)
            and isinstance(record.get("meta"), dict)
        ):
            raise ValueError(f"{CHECKPOINT_FILE} is corrupt (missing or malformed fields)")
        tensors_path = self.dir / name
        if not tensors_path.is_file():
            raise ValueError(f"the checkpoint tensor file {name} named in {CHECKPOINT_FILE} is missing")
        if verify:
            actual_sha, actual_size = _sha256_file(tensors_path)
            if actual_size != size:
                raise ValueError(
                    f"the checkpoint tensor file {name} is truncated or corrupt "
                    f"({actual_size} bytes, {CHECKPOINT_FILE} says {size})"
                )
            if actual_sha != sha:
                raise ValueError(
                    f"the checkpoint tensor file {name} is corrupt (sha256 mismatch with {CHECKPOINT_FILE})"
                )
            try:
                from safetensors import safe_open

                with safe_open(str(tensors_path), framework="pt") as fh:
                    list(fh.keys())
            except Exception as err:  # safetensors raises its own error types
                raise ValueError(
                    f"the checkpoint tensor file {name} is not valid safetensors ({err})"
                ) from None
        return record

    def load_checkpoint(self) -> tuple[dict[str, torch.Tensor], dict] | None:
        """Load the committed checkpoint as ``(tensors, meta)``, or ``None`` if none was saved yet.

        The tensor bytes are checked against the sha256 in ``checkpoint.json`` before parsing; a missing,
        truncated or corrupt checkpoint raises ``ValueError`` naming the run directory. Tensors come back
        on CPU with their saved dtypes; ``meta`` is the dict given to :meth:`save_checkpoint` (after the
        JSON conversion, so NaN/inf are None and tuples are lists).
        """
        from safetensors.torch import load as st_load

        try:
            record = self._read_checkpoint_record(verify=False)
            if record is None:
                return None
            name = record["tensors_file"]
            data = (self.dir / name).read_bytes()
            if len(data) != record["size"] or hashlib.sha256(data).hexdigest() != record["sha256"]:
                raise ValueError(
                    f"the checkpoint tensor file {name} is truncated or corrupt (sha256/size mismatch)"
                )
            try:
                tensors = st_load(data)
            except Exception as err:
                raise ValueError(
                    f"the checkpoint tensor file {name} is not valid safetensors ({err})"
                ) from None
        except ValueError as err:
            raise ValueError(f"checkpoint of run {self.dir}: {err}") from None
        return tensors, record["meta"]


# --------------------------------------------------------------------------------------------------
# graceful stop


class StopRequested(Exception):
    """Raised by :meth:`StopFlag.check` when SIGTERM/SIGINT asked the loop to stop."""


class StopFlag:
    """What :func:`graceful_stop` yields: ``requested`` (bool) and ``signal`` (the signal number or None)."""

    def __init__(self) -> None:
        self.requested = False
        self.signal: int | None = None

    def check(self) -> None:
        """Raise :class:`StopRequested` if a stop was requested."""
        if self.requested:
            raise StopRequested(f"stop requested by signal {self.signal}")

    def __bool__(self) -> bool:
        return self.requested

    def __repr__(self) -> str:
        return f"StopFlag(requested={self.requested}, signal={self.signal})"


@contextlib.contextmanager
def graceful_stop() -> Iterator[StopFlag]:
    """Within the block, SIGTERM and SIGINT set ``flag.requested`` instead of killing the process.

    The training loop checks the flag after each iteration, saves a checkpoint and returns. A second
    SIGINT while a stop is already pending raises ``KeyboardInterrupt`` (an escape hatch for a loop that
    never checks). The previous handlers are restored on exit. Signal handlers can only be set in the
    main thread; elsewhere this yields a flag that is never set and changes nothing.
    """
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    signals = [signal.SIGINT] + ([signal.SIGTERM] if hasattr(signal, "SIGTERM") else [])

    def handler(signum, frame):
        if flag.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag.requested = True
        flag.signal = signum

    previous = {}
    try:
        for sig in signals:
            previous[sig] = signal.getsignal(sig)
            signal.signal(sig, handler)
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
