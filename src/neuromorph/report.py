"""Plots (matplotlib, Agg, no pyplot state) and the self-contained HTML report of a run.

Every plot is drawn on its own :class:`matplotlib.figure.Figure` (never ``pyplot``, never ``show``),
rendered to PNG in memory and written atomically. :func:`build_report` turns a run directory into one
``report.html`` with the plots embedded as ``data:`` URIs and inline CSS, so the file opens offline and
can be mailed or archived on its own.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .runs import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    METRICS_FILE,
    RESULTS_FILE,
    atomic_write_bytes,
    atomic_write_text,
    read_metrics,
)

__all__ = ["build_report", "plot_bars", "plot_curves", "plot_raster"]

REPORT_FILE = "report.html"
_LAST_METRICS_ROWS = 10


# --------------------------------------------------------------------------------------------------
# helpers


def _png_path(path: Any) -> pathlib.Path:
    if not isinstance(path, str | os.PathLike):
        raise ValueError(f"path must be a file path ending in .png, got {path!r}")
    p = pathlib.Path(path)
    if p.suffix.lower() != ".png":
        raise ValueError(f"path must end in .png, got {str(p)!r}")
    if not p.parent.is_dir():
        raise ValueError(f"path {str(p)!r}: the directory {str(p.parent)!r} does not exist")
    return p


def _save(fig: Figure, path: pathlib.Path) -> pathlib.Path:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return path


def _as_2d(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor
        x = x.detach().to("cpu").float().numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be a numeric array or tensor of shape [T, N], got {type(x).__name__}"
        ) from None
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape [T, N] (time-major, 2-D), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} must have at least one time step and one column, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf")
    return arr


def _finite_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


# --------------------------------------------------------------------------------------------------
# plots


def plot_curves(
    metrics: list[dict],
    keys: list[str],
    path: str | os.PathLike,
    *,
    title: str = "",
    logy: bool = False,
    xlabel: str = "step",
) -> pathlib.Path:
    """Plot learning curves ``metrics[i][key]`` against ``metrics[i]["step"]`` for each key; write a PNG.

    ``metrics`` is a list of records as in ``metrics.jsonl`` (:meth:`neuromorph.runs.Run.metrics`). Keys
    that no record has are skipped, as are missing/None/non-finite values; with no data at all the plot
    says so. ``logy`` uses a logarithmic y axis (non-positive values are not drawn). Returns the path.
    """
    p = _png_path(path)
    if not isinstance(metrics, Sequence) or not all(isinstance(m, Mapping) for m in metrics):
        raise ValueError("metrics must be a list of dicts (records of metrics.jsonl)")
    if isinstance(keys, str) or not isinstance(keys, Sequence) or not all(isinstance(k, str) for k in keys):
        raise ValueError(f"keys must be a list of metric names, got {keys!r}")
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot()
    drawn = 0
    for key in keys:
        pts = []
        for rec in metrics:
            step, value = _finite_number(rec.get("step")), _finite_number(rec.get(key))
            if step is not None and value is not None and (not logy or value > 0):
                pts.append((step, value))
        if not pts:
            continue
        pts.sort()
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, ys, label=key, marker="." if len(pts) < 30 else None)
        drawn += 1
    if drawn:
        if logy:
            ax.set_yscale("log")
        ax.legend(loc="best")
    else:
        ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(xlabel)
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title)
    return _save(fig, p)


def plot_raster(
    spikes: Any,
    path: str | os.PathLike,
    *,
    thresholds: Any = None,
    threshold_labels: Sequence[str] | None = None,
    input_spikes: Any = None,
    dt: float = 1.0,
    title: str = "",
) -> pathlib.Path:
    """Spike raster of ``spikes`` [T, N] (nonzero = spike at time ``t * dt`` ms); write a PNG.

    Optional panels: ``input_spikes`` [T, M] above the network raster, and ``thresholds`` [T, k] (e.g.
    the adaptive thresholds of a few ALIF neurons) below it, labelled with ``threshold_labels`` (k
    strings). Arrays may be numpy arrays or tensors; all share the time axis. Returns the path.
    """
    p = _png_path(path)
    if isinstance(dt, bool) or not isinstance(dt, int | float) or not math.isfinite(dt) or dt <= 0:
        raise ValueError(f"dt must be a finite number > 0 (ms), got {dt!r}")
    s = _as_2d(spikes, "spikes")
    T = s.shape[0]
    panels: list[tuple[str, np.ndarray]] = []
    if input_spikes is not None:
        inp = _as_2d(input_spikes, "input_spikes")
        if inp.shape[0] != T:
            raise ValueError(f"input_spikes must have T={T} time steps like spikes, got shape {inp.shape}")
        panels.append(("input", inp))
    panels.append(("raster", s))
    th = None
    if thresholds is not None:
        th = _as_2d(thresholds, "thresholds")
        if th.shape[0] != T:
            raise ValueError(f"thresholds must have T={T} time steps like spikes, got shape {th.shape}")
        if threshold_labels is not None:
            if isinstance(threshold_labels, str) or len(threshold_labels) != th.shape[1]:
                raise ValueError(
                    f"threshold_labels must be a list of {th.shape[1]} labels (one per threshold column), "
                    f"got {threshold_labels!r}"
                )
    elif threshold_labels is not None:
        raise ValueError("threshold_labels given without thresholds")
    ratios = [max(1.0, min(3.0, a.shape[1] / 40)) for _, a in panels] + ([1.2] if th is not None else [])
    fig = Figure(figsize=(7.0, 1.2 + 1.4 * sum(ratios)))
    axes = fig.subplots(len(ratios), 1, sharex=True, squeeze=False, gridspec_kw={"height_ratios": ratios})[
        :, 0
    ]
    times = np.arange(T) * dt
    for ax, (kind, arr) in zip(axes, panels, strict=False):
        t_idx, n_idx = np.nonzero(arr)
        marker_size = max(1.0, min(6.0, 400.0 / max(arr.shape[1], 1)))
        ax.scatter(
            times[t_idx], n_idx, s=marker_size, marker="|", color="k" if kind == "raster" else "tab:blue"
        )
        ax.set_ylim(-0.5, arr.shape[1] - 0.5)
        ax.set_ylabel("input" if kind == "input" else "neuron")
        ax.margins(x=0)
    if th is not None:
        ax = axes[-1]
        for j in range(th.shape[1]):
            label = threshold_labels[j] if threshold_labels is not None else f"neuron {j}"
            ax.plot(times, th[:, j], label=str(label), lw=1.0)
        ax.set_ylabel("threshold")
        if th.shape[1] <= 10:
            ax.legend(loc="upper right", fontsize="small")
    axes[-1].set_xlabel("time [ms]")
    axes[-1].set_xlim(times[0] - 0.5 * dt, times[-1] + 0.5 * dt)
    if title:
        axes[0].set_title(title)
    return _save(fig, p)


def plot_bars(
    values: dict[str, float],
    path: str | os.PathLike,
    *,
    ylabel: str,
    title: str = "",
    hline: float | None = None,
) -> pathlib.Path:
    """Bar chart of ``values`` (label -> number), e.g. the recall error of LSNN vs LIF; write a PNG.

    Each bar is annotated with its value; a NaN/inf value draws no bar and reads "n/a". ``hline`` adds a
    dashed reference line (e.g. chance level). Returns the path.
    """
    p = _png_path(path)
    if not isinstance(values, Mapping) or not values:
        raise ValueError(f"values must be a non-empty dict of label -> number, got {values!r}")
    nums = []
    for label, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float | np.number):
            raise ValueError(f"values[{label!r}] must be a number, got {value!r}")
        nums.append(float(value))
    if hline is not None and (
        isinstance(hline, bool) or not isinstance(hline, int | float) or not math.isfinite(hline)
    ):
        raise ValueError(f"hline must be a finite number or None, got {hline!r}")
    if not isinstance(ylabel, str):
        raise ValueError(f"ylabel must be a str, got {ylabel!r}")
    labels = [str(k) for k in values]
    heights = [v if math.isfinite(v) else 0.0 for v in nums]
    fig = Figure(figsize=(max(3.5, 1.1 * len(labels) + 1.5), 3.6))
    ax = fig.add_subplot()
    bars = ax.bar(range(len(labels)), heights, color="tab:blue")
    for bar, v in zip(bars, nums, strict=True):
        text = f"{v:.3g}" if math.isfinite(v) else "n/a"
        ax.annotate(
            text,
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            xytext=(0, 2),
            textcoords="offset points",
            fontsize="small",
        )
    ax.set_xticks(range(len(labels)), labels, rotation=20 if len(labels) > 4 else 0)
    ax.margins(y=0.1)  # room for the value labels
    if hline is not None:
        ax.axhline(hline, color="tab:red", ls="--", lw=1.0)
        low, high = ax.get_ylim()
        span = max(high, hline) - min(low, hline)
        ax.set_ylim(min(low, hline - 0.05 * span) if hline < low else low, max(high, hline + 0.08 * span))
    ax.set_ylabel(ylabel)
    ax.grid(True, axis="y", alpha=0.3)
    if title:
        ax.set_title(title)
    return _save(fig, p)


# --------------------------------------------------------------------------------------------------
# the HTML report

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:980px;
color:#222;padding:0 1em;line-height:1.4}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
.meta{color:#666;font-size:.9em}.status{display:inline-block;padding:.1em .6em;border-radius:.8em;
font-size:.85em;background:#e8f3e8;color:#256029}.status.partial{background:#fff4e0;color:#8a5300}
table{border-collapse:collapse;margin:.5em 0;font-size:.92em}
td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f5f5f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}figcaption{color:#666;font-size:.9em}
.empty{color:#888;font-style:italic}
"""


def _flatten(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(obj, Mapping):
        rows: list[tuple[str, Any]] = []
        for key, value in obj.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, Mapping) and value:
                rows.extend(_flatten(value, name))
            else:
                rows.append((name, value))
        return rows
    return [(prefix or "value", obj)]


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, list | tuple | dict):
        return json.dumps(value, default=str)
    return str(value)


def _is_num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _table(rows: list[tuple[str, Any]], header: tuple[str, str]) -> str:
    out = [f"<table><tr><th>{html.escape(header[0])}</th><th>{html.escape(header[1])}</th></tr>"]
    for key, value in rows:
        cls = ' class="num"' if _is_num(value) else ""
        out.append(f"<tr><td>{html.escape(key)}</td><td{cls}>{html.escape(_fmt(value))}</td></tr>")
    out.append("</table>")
    return "\n".join(out)


def _metrics_table(metrics: list[dict]) -> str:
    last = metrics[-_LAST_METRICS_ROWS:]
    cols: list[str] = ["step"]
    for rec in last:
        for key in rec:
            if key not in cols and key != "time":
                cols.append(key)
    cols.append("time")
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    rows = [f"<table><tr>{head}</tr>"]
    for rec in last:
        cells = []
        for c in cols:
            value = rec.get(c)
            if c == "time" and _is_num(value):
                text = _dt.datetime.fromtimestamp(value).astimezone().strftime("%Y-%m-%d %H:%M:%S")
            else:
                text = _fmt(value) if c in rec else ""
            cls = ' class="num"' if _is_num(value) and c != "time" else ""
            cells.append(f"<td{cls}>{html.escape(text)}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _read_json(path: pathlib.Path, run_dir: pathlib.Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"run_dir {str(run_dir)!r}: {path.name} is unreadable or corrupt ({err})") from None


def build_report(run_dir: str | os.PathLike) -> pathlib.Path:
    """Write ``run_dir/report.html``: a self-contained page summarising the run; return its path.

    It holds the recipe as title, the status (complete when ``results.json`` exists, else partial), the
    headline results, the config, every ``*.png`` of the run directory embedded as a base64 ``data:``
    URI, and the last metrics records. All text is HTML-escaped; CSS is inline; nothing is fetched from
    the network. A run without results or metrics yet (partial run) gets a valid report too.
    ``ValueError`` if ``run_dir`` is not a directory or its ``config.yaml`` is missing or corrupt.
    """
    if not isinstance(run_dir, str | os.PathLike):
        raise ValueError(f"run_dir must be a path, got {run_dir!r}")
    d = pathlib.Path(run_dir)
    if not d.is_dir():
        raise ValueError(f"run_dir {str(d)!r} is not a directory")
    cfg_path = d / CONFIG_FILE
    try:
        info = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(
            f"run_dir {str(d)!r} has no {CONFIG_FILE} (not a neuromorph run directory)"
        ) from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ValueError(f"run_dir {str(d)!r}: {CONFIG_FILE} is unreadable or corrupt ({err})") from None
    if not isinstance(info, Mapping):
        raise ValueError(f"run_dir {str(d)!r}: {CONFIG_FILE} is corrupt (not a mapping)")
    recipe = str(info.get("recipe", "?"))
    config = info.get("config") or {}
    results = _read_json(d / RESULTS_FILE, d)
    try:
        ckpt = _read_json(d / CHECKPOINT_FILE, d)
    except ValueError:  # only informational here; `--resume` reports a damaged checkpoint
        ckpt = None
    metrics = read_metrics(d / METRICS_FILE)
    pngs = sorted(p for p in d.glob("*.png") if p.is_file())

    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(recipe)} - neuromorph run</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{e(recipe)}</h1>",
    ]
    complete = results is not None
    status = "complete" if complete else "partial: no results yet"
    meta_bits = [f"run directory <code>{e(d.name)}</code>"]
    for key, label in (("created", "created"), ("host", "host")):
        if info.get(key) is not None:
            meta_bits.append(f"{label} {e(str(info[key]))}")
    versions = [
        f"{name} {info[key]}"
        for name, key in (("neuromorph", "neuromorph_version"), ("torch", "torch_version"))
        if info.get(key)
    ]
    if versions:
        meta_bits.append(e(", ".join(versions)))
    if isinstance(ckpt, Mapping) and isinstance(ckpt.get("step"), int):
        meta_bits.append(f"last checkpoint at step {ckpt['step']}")
    if metrics and isinstance(metrics[-1].get("step"), int):
        meta_bits.append(f"last logged step {metrics[-1]['step']}")
    parts.append(
        f'<p><span class="status{"" if complete else " partial"}">{e(status)}</span></p>'
        f'<p class="meta">{" &middot; ".join(meta_bits)}</p>'
    )

    parts.append("<h2>Results</h2>")
    if results is None:
        parts.append('<p class="empty">No results yet (the run has not finished).</p>')
    else:
        rows = _flatten(results)
        parts.append(
            _table(rows, ("result", "value")) if rows else '<p class="empty">results.json is empty.</p>'
        )

    parts.append("<h2>Plots</h2>")
    if pngs:
        for png in pngs:
            b64 = base64.b64encode(png.read_bytes()).decode("ascii")
            parts.append(
                f'<figure><img src="data:image/png;base64,{b64}" alt="{e(png.stem)}">'
                f"<figcaption>{e(png.name)}</figcaption></figure>"
            )
    else:
        parts.append('<p class="empty">No plots yet.</p>')

    parts.append("<h2>Last metrics</h2>")
    if metrics:
        parts.append(_metrics_table(metrics))
    else:
        parts.append('<p class="empty">No metrics logged yet.</p>')

    parts.append("<h2>Config</h2>")
    rows = _flatten(config) if isinstance(config, Mapping) else [("config", config)]
    parts.append(_table(rows, ("key", "value")) if rows else '<p class="empty">Empty config.</p>')
    parts.append(
        f'<p class="meta">Written by neuromorph on '
        f"{e(_dt.datetime.now().astimezone().isoformat(timespec='seconds'))}.</p>"
    )
    parts.append("</body></html>\n")
    out = d / REPORT_FILE
    atomic_write_text(out, "\n".join(parts))
    return out
