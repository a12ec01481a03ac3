"""SVG plots of a run: training history and confusion matrix, drawn with matplotlib's object API."""

from __future__ import annotations

import io
import math
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trainer.fileio import atomic_write_text

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Fixed salt and no date: the same data gives byte-identical SVGs (clip-path ids are hashes).
# Text stays text so the numbers in a plot are searchable, and the files stay small; one font
# name (always bundled with matplotlib, so the layout is measured with it) instead of matplotlib's
# ten-name fallback list, which would be repeated in every <text> style.
_RC = {"svg.hashsalt": "trainer", "svg.fonttype": "none", "font.sans-serif": ["DejaVu Sans"]}
# rc_context swaps matplotlib's global rcParams; serialise our renders so that two threads
# plotting at once cannot see each other's (or the restored default) settings mid-save.
_LOCK = threading.Lock()


def render_svg(draw: Callable[..., None], *args: object) -> str:
    """Build a Figure with `draw(fig, *args)` and return it as SVG text. No pyplot, no GUI."""
    import matplotlib
    from matplotlib.backends.backend_svg import FigureCanvasSVG
    from matplotlib.figure import Figure

    with _LOCK, matplotlib.rc_context(_RC):
        fig = Figure(layout="constrained")
        FigureCanvasSVG(fig)
        draw(fig, *args)
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None})
    return buf.getvalue()


def _column(history: Sequence[Mapping[str, float]], key: str) -> np.ndarray:
    values = [row.get(key) for row in history]
    return np.array([math.nan if v is None else float(v) for v in values], dtype=float)


def history_svg(history: Sequence[Mapping[str, float]], title: str = "") -> str:
    """Loss per epoch (left) and train/test accuracy in % (right); lines have gids
    `loss`, `train_accuracy` and `test_accuracy`. Missing or NaN test accuracies are not drawn."""
    return render_svg(_draw_history, history, title)


def _draw_history(fig: Figure, history: Sequence[Mapping[str, float]], title: str) -> None:

    fig.set_size_inches(10, 4)
    epochs = _column(history, "epoch")
    # markers keep a 1-epoch run (or an isolated test point between NaNs) visible
    style = {"marker": "o" if len(history) <= 50 else "", "markersize": 3}
    loss = _column(history, "loss")
    loss_ax, acc_ax = fig.subplots(1, 2)
    loss_ax.plot(epochs, loss, color="C0", label="loss", gid="loss", **style)
    loss_ax.set_ylabel("loss")
    if all(v > 0 for v in loss if v == v):
        loss_ax.set_yscale("log")  # late epochs' loss falls below 1e-2: linear shows a flat line
        loss_ax.set_ylabel("loss (log scale)")
    acc_ax.plot(epochs, 100 * _column(history, "train_accuracy"), color="C1", label="train",
                gid="train_accuracy", **style)
    held_out = (("val_accuracy", "validation", "C3"), ("test_accuracy", "test", "C2"))
    for key, label, color in held_out:
        held = 100 * _column(history, key)
        if np.isfinite(held).any():  # runs without this evaluation get no empty legend entry
            acc_ax.plot(epochs, held, color=color, label=label, gid=key, **style)
    acc_ax.set_ylabel("accuracy (%)")
    _epoch_panels((loss_ax, "loss"), (acc_ax, "accuracy"))
    loss_ax.legend()
    acc_ax.legend()
    if title:
        fig.suptitle(title)


def overlay_svg(groups: Mapping[str, Sequence[Sequence[Mapping[str, float]]]],
                title: str = "") -> str:
    """Many runs' histories in one figure: loss (left) and held-out accuracy in % (right; the
    validation accuracy where a run has one, else the test accuracy). Each group (a config)
    has a colour: its runs are thin lines (gids `loss-<group>-<i>`, `acc-<group>-<i>`), and a
    group of several runs gets a thick mean line over the runs that reached each epoch (gids
    `loss-mean-<group>`, `acc-mean-<group>`)."""
    return render_svg(_draw_overlay, groups, title)


def mean_curve(series: Sequence[np.ndarray]) -> np.ndarray:
    """The mean at each epoch over the series that reached it and have a value there (runs
    stopped early are shorter); NaN where none has."""
    longest = max(len(y) for y in series)
    padded = np.full((len(series), longest), math.nan)
    for j, y in enumerate(series):
        padded[j, :len(y)] = y
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an epoch no run has a value for
        return np.nanmean(padded, axis=0)


def _held_out(history: Sequence[Mapping[str, float]]) -> np.ndarray:
    val = _column(history, "val_accuracy")
    return 100 * (val if np.isfinite(val).any() else _column(history, "test_accuracy"))


def _draw_overlay(fig: Figure, groups: Mapping[str, Sequence[Sequence[Mapping[str, float]]]],
                  title: str) -> None:

    fig.set_size_inches(10, 4)
    loss_ax, acc_ax = fig.subplots(1, 2)
    positive = True
    for i, (name, runs) in enumerate(groups.items()):
        color = f"C{i % 10}"
        for ax, panel, values in ((loss_ax, "loss", [_column(h, "loss") for h in runs]),
                                  (acc_ax, "acc", [_held_out(h) for h in runs])):
            for j, (history, y) in enumerate(zip(runs, values, strict=True)):
                ax.plot(_column(history, "epoch"), y, color=color, gid=f"{panel}-{name}-{j}",
                        linewidth=0.8, alpha=0.35 if len(runs) > 1 else 1.0,
                        marker="o" if len(history) == 1 else "", markersize=3,
                        label=name if len(runs) == 1 else None)
            positive &= all(v > 0 for y in values for v in y if v == v)
            if len(runs) > 1:
                mean = mean_curve(values)
                ax.plot(np.arange(1, len(mean) + 1), mean, color=color, linewidth=2.2,
                        gid=f"{panel}-mean-{name}", label=f"{name} (mean of {len(runs)})",
                        marker="o" if len(mean) == 1 else "", markersize=4)
    if positive:
        loss_ax.set_yscale("log")
    loss_ax.set_ylabel("loss (log scale)" if positive else "loss")
    acc_ax.set_ylabel("accuracy (%)")
    _epoch_panels((loss_ax, "loss"), (acc_ax, "held-out accuracy: validation, else test"))
    if groups:  # a batch whose runs all failed has no curve to name
        acc_ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)


def confusion_svg(confusion: np.ndarray, class_names: Sequence[str], title: str = "") -> str:
    """A heatmap of counts[actual, predicted] (gid `confusion`), each cell showing its count."""
    counts = np.asarray(confusion)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or len(class_names) != len(counts):
        raise ValueError(f"need an n x n matrix and n class names, got {counts.shape} and "
                         f"{len(class_names)} names")
    return render_svg(_draw_confusion, counts, list(class_names), title)


def _draw_confusion(fig: Figure, counts: np.ndarray, names: list[str], title: str) -> None:
    import matplotlib
    from matplotlib.colors import ListedColormap, LogNorm
    from matplotlib.ticker import FuncFormatter, NullFormatter

    n = len(counts)
    side = min(max(4.0, 0.55 * n + 2.0), 16.0)
    fig.set_size_inches(side + 1.2, side)
    # Colour is the fraction of each actual class (row), on a log scale; the text is the raw
    # count. With ~1000 test images per digit the diagonal is ~98% and errors are 0.1-2%: a
    # linear scale paints every error the colour of an empty cell. Row-normalising makes
    # classes of different sizes comparable; the log scale gives each decade of error rate its
    # own shade; zeros (no error at all) are white, below the colour bar's lightest blue.
    totals = counts.sum(axis=1, keepdims=True)
    fraction = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    positive = fraction[fraction > 0]
    vmin = min(positive.min() if positive.size else 1.0, 0.01)  # at least two decades
    blues = ListedColormap(matplotlib.colormaps["Blues"](np.linspace(0.15, 1.0, 256)))
    cmap = blues.with_extremes(bad="white", under="white")
    norm = LogNorm(vmin=vmin, vmax=1.0)
    ax = fig.subplots()
    # vector cells (one path each), not an embedded bitmap: some SVG viewers smooth bitmaps
    edges = np.arange(n + 1) - 0.5
    image = ax.pcolormesh(edges, edges, np.ma.masked_less_equal(fraction, 0), cmap=cmap,
                          norm=norm, gid="confusion")
    ax.set_aspect("equal")
    ax.invert_yaxis()  # row 0 (actual class 0) at the top, as in the printed matrix
    bar = fig.colorbar(image, ax=ax, label="share of the actual class")
    bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v:g}%"))  # 0.1%, 1%
    bar.ax.yaxis.set_minor_formatter(NullFormatter())

    size = max(5.0, min(10.0, 100.0 / n))
    for (i, j), count in np.ndenumerate(counts):
        r, g, b, _ = cmap(norm(fraction[i, j])) if fraction[i, j] > 0 else (1, 1, 1, 1)
        dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.55  # perceived luminance of the cell
        color = "white" if dark else ("0.6" if count == 0 else "black")
        ax.text(j, i, f"{count:.0f}", ha="center", va="center", fontsize=size, color=color,
                fontweight="bold" if i == j else "normal")

    ax.set_xticks(range(n), names)
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.tick_params(length=0)
    if title:
        ax.set_title(title)


def write_svg(path: str | Path, svg_text: str) -> None:
    """Write an SVG atomically: the old file stays intact on any error (WriteError on OSError)."""
    atomic_write_text(path, svg_text)


def _epoch_panels(*panels: tuple[Any, str]) -> None:
    """Each (axes, title): titled, epochs on x in whole numbers, a light grid."""
    from matplotlib.ticker import MaxNLocator

    for ax, title in panels:
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
