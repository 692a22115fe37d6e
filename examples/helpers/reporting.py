"""Reporting for the examples: results tables, learning curves, figures."""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from examples.helpers.training import History

__all__ = [
    "markdown_table",
    "mean_spread",
    "output_dir",
    "plot_curves",
    "pyplot",
    "save_figure",
    "savefig",
    "summarize",
]


def mean_spread(
    values: Sequence[float] | np.ndarray, *, percent: bool = True, digits: int = 1
) -> str:
    """``"mean ± std"`` over seeds (sample std, ddof=1), in percent by default."""
    v = np.asarray(values, dtype=np.float64) * (100.0 if percent else 1.0)
    std = v.std(ddof=1) if v.size > 1 else 0.0
    return f"{v.mean():.{digits}f} ± {std:.{digits}f}"


def summarize(history: History, *, best: bool = False) -> dict[str, str]:
    """One results-table row: test / train accuracy and gap as mean ± std (%).

    With ``best=True`` the row ends with the best test accuracy over epochs.
    """
    f = history.final
    row = {
        "configuration": history.name,
        "test acc (%)": mean_spread(f["test_acc"]),
        "train acc (%)": mean_spread(f["train_acc"]),
        "gap (pp)": mean_spread(f["gap"]),
        "epochs": str(int(np.median(f["epochs"]))),
        "seeds": str(len(f["test_acc"])),
        "time (s)": f"{history.seconds:.1f}",
    }
    if best:
        row["best test acc (%)"] = mean_spread(history.test_acc.max(1))
    return row


def markdown_table(rows: Sequence[dict[str, str]]) -> str:
    """Render a list of same-keyed dicts as a GitHub-flavoured markdown table."""
    if not rows:
        return ""
    cols = list(rows[0])
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in cols]
    line = (
        "| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)) + " |"
    )
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = [
        "| "
        + " | ".join(str(r[c]).ljust(w) for c, w in zip(cols, widths, strict=True))
        + " |"
        for r in rows
    ]
    return "\n".join([line, sep, *body])


# ---------------------------------------------------------------------- plotting
def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(
    histories: Sequence[History],
    path: str | os.PathLike,
    *,
    title: str = "",
    metrics: Sequence[str] = ("test_acc", "train_acc"),
    ncols: int = 4,
) -> pathlib.Path:
    """Learning curves, one panel per history: mean over seeds, band = min..max.

    Args:
      histories: the configurations to plot.
      path: output PNG path (parent folders are created).
      title: figure title.
      metrics: which curves to draw (``History`` attribute names).
      ncols: panels per row.

    Returns:
      The path written.
    """
    plt = pyplot()
    k = len(histories)
    ncols = min(ncols, k)
    nrows = -(-k // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(3.2 * ncols, 2.6 * nrows), squeeze=False, sharey=True
    )
    styles = {"test_acc": "C0", "train_acc": "C1", "test_loss": "C2"}
    for ax, h in zip(axes.ravel(), histories, strict=False):
        for m in metrics:
            curve = getattr(h, m)
            epochs = np.arange(1, curve.shape[1] + 1)
            ax.plot(epochs, curve.mean(0), color=styles.get(m), label=m, lw=1.2)
            ax.fill_between(
                epochs, curve.min(0), curve.max(0), color=styles.get(m), alpha=0.25
            )
        ax.set_title(h.name, fontsize=9)
        ax.grid(alpha=0.3)
        ax.set_xlabel("epoch", fontsize=8)
    for ax in axes.ravel()[k:]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return savefig(fig, path)


def savefig(fig, path: str | os.PathLike, *, dpi: int = 110) -> pathlib.Path:
    """Save a matplotlib figure as PNG (creating folders) and close it."""
    plt = pyplot()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


def save_figure(
    fig, out: str | os.PathLike, stem: str, title: str, *, summary: dict | None = None
) -> pathlib.Path:
    """Title ``fig``, lay it out and save it as ``out/stem.png`` (then close it).

    With ``summary``, also write it as JSON to ``out/stem.json``. Returns the
    figure's path.
    """
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = savefig(fig, pathlib.Path(out) / f"{stem}.png")
    if summary is not None:
        (pathlib.Path(out) / f"{stem}.json").write_text(json.dumps(summary))
    return path


def output_dir(path: str | os.PathLike) -> pathlib.Path:
    """Create and return an output folder (relative paths are from the cwd)."""
    p = pathlib.Path(path)
    p.mkdir(parents=True, exist_ok=True)
    return p
