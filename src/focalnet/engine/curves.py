"""``curves.png`` of a training run: training loss and learning rate per logged step, validation losses
and metrics per evaluation, one panel each (no empty panel), drawn with matplotlib's object API."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["curves_figure", "plot_curves"]

# history keys that are bookkeeping, not curves worth a panel
_NOT_CURVES = ("epoch", "step", "time", "lr", "train_loss", "loss", "ema_loss")


def _series(records: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    pts = [
        (r["step"], r[key])
        for r in records
        if "step" in r and isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)
    ]
    return [p[0] for p in pts], [p[1] for p in pts]


def curves_figure(history: Sequence[dict[str, Any]], steps: Sequence[dict[str, Any]] = ()) -> Any:
    """The figure of :func:`plot_curves` (a ``matplotlib.figure.Figure`` on an Agg canvas), or None when
    there is nothing to plot.

    ``history``: one record per epoch or evaluation (``step``, ``train_loss``, ``lr``, validation ``loss``
    and metrics); ``steps``: one record per logged optimizer step (``step``, ``loss``, ``lr``), which draws
    the training loss and the learning rate as lines even for a run of a few steps. Panels: training
    loss, validation loss, validation metrics, learning rate, whichever have data (1 to 3 in a row, 4 in
    a 2x2 grid)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metrics = sorted(
        {
            k
            for h in history
            for k, v in h.items()
            if isinstance(v, (int, float))
            and not isinstance(v, bool)
            and k not in _NOT_CURVES
            and not any(s in k for s in ("images_per_second", "skipped", "num_", "time"))
        }
    )
    # (title, y label, [(x, y, label, style)])
    panels: list[tuple[str, str, list[tuple[list[float], list[float], str, dict[str, Any]]]]] = []
    train = []
    if _series(steps, "loss")[0]:
        train.append((*_series(steps, "loss"), "per logged step", {"lw": 1.2}))
    if _series(history, "train_loss")[0]:
        train.append((*_series(history, "train_loss"), "epoch mean", {"marker": "o", "ms": 4, "lw": 1.0}))
    if train:
        panels.append(("training loss", "loss", train))
    val = [(*_series(history, k), k, {"marker": "o", "ms": 3}) for k in ("loss", "ema_loss") if _series(history, k)[0]]
    if val:
        panels.append(("validation loss", "loss", val))
    if metrics:
        unit = "%" if any(k in ("top1", "top5", "mIoU", "mAcc", "aAcc") for k in metrics) else "value"
        panels.append(
            ("validation metrics", unit, [(*_series(history, k), k, {"marker": "o", "ms": 3}) for k in metrics])
        )
    lr = _series(steps, "lr") if _series(steps, "lr")[0] else _series(history, "lr")
    if lr[0]:
        panels.append(("learning rate", "lr", [(*lr, "lr", {"lw": 1.2, "marker": "o" if len(lr[0]) < 3 else None})]))
    if not panels:
        return None
    cols = len(panels) if len(panels) <= 3 else 2
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(5.0 * cols, 3.6 * rows), layout="tight")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).flat
    for ax, (title, ylabel, lines) in zip(axes, panels):
        for x, y, label, style in lines:
            ax.plot(x, y, label=label, **style)
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if len(lines) > 1:
            ax.legend(fontsize=8)
        if ylabel == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    return fig


def plot_curves(
    history: Sequence[dict[str, Any]], path: str | os.PathLike, steps: Sequence[dict[str, Any]] = ()
) -> Path | None:
    """Write :func:`curves_figure` as a PNG (atomically: temporary file, then rename) against the
    optimizer step. Throughput and counts of skipped images are not plotted. Returns the path, or None
    when matplotlib is missing or there is nothing to plot."""
    try:
        fig = curves_figure(history, steps)
    except ImportError:
        return None
    if fig is None:
        return None
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=100, format="png")
    os.replace(tmp, path)
    return path
