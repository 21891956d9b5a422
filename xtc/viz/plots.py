"""Matplotlib plots for datasets, predictions and training curves.

Every ``show_*`` / ``plot_*`` function returns a ``matplotlib.figure.Figure`` (a notebook
displays it as the cell's result; a script can ``savefig`` it). matplotlib is imported inside
the functions, so ``import xtc.viz`` stays light. Segmentation colours follow the Cityscapes
category palette for 7 classes and matplotlib's ``tab20`` otherwise; ``-1`` (ignore) is black.
Depth is drawn in the dataset's units (``dataset.depth_units``).
"""

from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence

import numpy as np
import torch

# Cityscapes 7 categories: flat, construction, object, nature, sky, human, vehicle
CITYSCAPES_7 = np.array([[128, 64, 128], [70, 70, 70], [250, 170, 30], [107, 142, 35],
                         [70, 130, 180], [220, 20, 60], [0, 0, 142]], dtype=np.uint8)


def seg_palette(num_classes: int) -> np.ndarray:
    """``(K, 3)`` uint8 colours for ``num_classes`` classes."""
    if num_classes == 7:
        return CITYSCAPES_7.copy()
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return (np.array([cmap(i % 20)[:3] for i in range(num_classes)]) * 255).astype(np.uint8)


def colorize_seg(labels: Any, num_classes: Optional[int] = None) -> np.ndarray:
    """Label map ``(H,W)`` (or logits ``(K,H,W)``, argmaxed) -> RGB ``(H,W,3)`` uint8;
    ``-1`` (ignore) is black.

    Examples:
        >>> colorize_seg(np.array([[0, -1]]), num_classes=7).tolist()
        [[[128, 64, 128], [0, 0, 0]]]
    """
    labels = _numpy(labels)
    if labels.ndim == 3:  # (K,H,W) logits
        num_classes = num_classes or labels.shape[0]
        labels = labels.argmax(0)
    labels = labels.astype(np.int64)
    num_classes = num_classes or int(labels.max()) + 1
    palette = np.vstack([seg_palette(num_classes), np.zeros((1, 3), np.uint8)])
    return palette[np.where(labels < 0, num_classes, labels)]


def show_samples(dataset, n: int = 4, indices: Optional[Sequence[int]] = None):
    """``n`` items of ``dataset`` as rows: image, segmentation target, depth target."""
    indices = list(indices) if indices is not None else list(range(min(n, len(dataset))))
    fig = figure((9, 2.4 * len(indices)))
    axes = fig.subplots(len(indices), 3, squeeze=False)
    for row, index in zip(axes, indices):
        item = dataset[index]
        _image(row[0], _rgb(item["image"]), f"image #{index}")
        _image(row[1], colorize_seg(item["seg_target"], dataset.num_classes), "seg_target")
        _depth(row[2], item["depth_target"][0], item["depth_mask"][0],
               f"depth_target ({dataset.depth_units})")
    _legend(fig, dataset.class_names)
    fig.tight_layout()
    return fig


@torch.no_grad()
def show_predictions(model, dataset, indices: Sequence[int] = (0, 1, 2), device: str = "cpu"):
    """Rows of image, GT and predicted segmentation and depth; for an ``xtc`` model also
    the transferred predictions ``depth2seg`` and ``seg2depth``."""
    model = model.to(device).eval()
    batch = torch.stack([dataset[i]["image"] for i in indices]).to(device)
    out = {k: v.float().cpu() for k, v in model(batch).items()}
    cols = ["image"]
    if "seg" in out:
        cols += ["seg_target", "seg"] + (["depth2seg"] if "depth2seg" in out else [])
    if "depth" in out:
        cols += ["depth_target", "depth"] + (["seg2depth"] if "seg2depth" in out else [])
    fig = figure((2.3 * len(cols), 2.2 * len(indices)))
    axes = fig.subplots(len(indices), len(cols), squeeze=False)
    for r, index in enumerate(indices):
        item = dataset[index]
        for ax, col in zip(axes[r], cols):
            if col == "image":
                _image(ax, _rgb(item["image"]), f"image #{index}")
            elif col in ("seg_target", "seg", "depth2seg"):
                labels = item["seg_target"] if col == "seg_target" else out[col][r]
                _image(ax, colorize_seg(labels, model.num_classes), col)
            else:
                mask = item["depth_mask"][0]
                value = item["depth_target"][0] if col == "depth_target" else out[col][r, 0]
                _depth(ax, value, mask if col == "depth_target" else None, col)
    _legend(fig, getattr(dataset, "class_names", None))
    fig.tight_layout()
    return fig


def plot_history(history: list, keys: Optional[Iterable[str]] = None):
    """Per-epoch curves from ``Run.history`` / ``results.json["history"]``; by default the
    train loss terms and the validation metrics, one panel each group."""
    numeric = sorted({k for h in history for k, v in h.items()
                      if isinstance(v, (int, float)) and k not in ("epoch", "lr")})
    keys = list(keys) if keys is not None else numeric
    groups = {"train": [k for k in keys if k.startswith("train_")],
              "val": [k for k in keys if not k.startswith("train_")]}
    groups = {g: ks for g, ks in groups.items() if ks}
    fig = figure((6 * max(len(groups), 1), 3.5))
    axes = fig.subplots(1, max(len(groups), 1), squeeze=False)
    epochs = [h.get("epoch", i) + 1 for i, h in enumerate(history)]
    for ax, (group, ks) in zip(axes[0], groups.items()):
        for key in ks:
            ax.plot(epochs, [h.get(key, np.nan) for h in history], marker="o", label=key)
        ax.set(xlabel="epoch", title=group)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


# what each task's panels show: (task, train loss terms, eval metrics), in reading order
TASK_CURVES = (
    ("segmentation", ("seg", "depth2seg"), ("miou", "pixel_acc")),
    ("depth", ("depth", "seg2depth"), ("abs_err", "rel_err")),
)
LOSS_NAMES = {"seg": "seg (cross-entropy)", "depth": "depth (L1)",
              "depth2seg": "depth2seg (transferred → seg)",
              "seg2depth": "seg2depth (transferred → depth)", "total": "total (weighted)"}


def plot_task_curves(history: list, depth_units: str = "inverse depth", path=None):
    """Training curves one column per task, on labelled axes: the train loss terms that land
    on the task (its direct loss and the cross-task term transferred onto it) above, its
    evaluation metrics (``val_*`` under ``train.protocol=xtc``, ``test_*`` under ``mtan`` /
    ``paper``) below; a last column has the total loss and the selection score when logged.
    Tasks the run does not have (single-task runs) are left out."""
    split = "val" if any(k.startswith("val_") for h in history for k in h) else "test"
    epochs = [h.get("epoch", i) + 1 for i, h in enumerate(history)]
    have = {k for h in history for k, v in h.items() if isinstance(v, (int, float))}
    columns = [(title, [t for t in terms if f"train_{t}" in have],
                [m for m in metrics if f"{split}_{m}" in have])
               for title, terms, metrics in TASK_CURVES]
    columns = [c for c in columns if c[1] or c[2]]
    overall = [k for k in ("train_total", "selection_score") if k in have]
    ncols = len(columns) + bool(overall)
    fig = figure((4.2 * max(ncols, 1), 6.0))
    axes = fig.subplots(2, max(ncols, 1), squeeze=False, sharex=True)

    def curve(ax, key, label):
        ax.plot(epochs, [h.get(key, np.nan) for h in history], marker="o", label=label)

    for c, (title, terms, metrics) in enumerate(columns):
        top, bottom = axes[0][c], axes[1][c]
        for t in terms:
            curve(top, f"train_{t}", LOSS_NAMES.get(t, t))
        top.set(title=f"{title}: train loss terms", ylabel="loss (per step, epoch mean)")
        for m in metrics:
            unit = depth_units if m == "abs_err" else "fraction"
            arrow = "↑" if m in ("miou", "pixel_acc") else "↓"
            curve(bottom, f"{split}_{m}", f"{m} {arrow} ({unit})")
        bottom.set(title=f"{title}: {split} metrics", xlabel="epoch",
                   ylabel="metric (units in legend)")
        for ax in (top, bottom):
            if ax.lines:
                ax.legend(fontsize=7)
    if overall:
        top, bottom = axes[0][-1], axes[1][-1]
        if "train_total" in overall:
            curve(top, "train_total", LOSS_NAMES["total"])
            top.legend(fontsize=7)
        top.set(title="all tasks: train loss", ylabel="loss (per step, epoch mean)")
        if "selection_score" in overall:
            curve(bottom, "selection_score", f"selection score ({split})")
            bottom.legend(fontsize=7)
        bottom.set(title="model selection", xlabel="epoch", ylabel="score (train.select)")
    for ax in axes.flat:
        if not ax.lines:
            ax.set_axis_off()
    fig.tight_layout()
    return finish(fig, path)


def pixel_table(dataset, n: Optional[int] = None) -> dict[str, np.ndarray]:
    """Flattened ``seg_target``, ``depth_target`` and ``depth_mask`` of the first ``n`` items
    (all by default): the raw material of the class-balance and depth plots."""
    n = len(dataset) if n is None else min(n, len(dataset))
    items = [dataset[i] for i in range(n)]
    return {"seg": np.concatenate([_numpy(it["seg_target"]).ravel() for it in items]),
            "depth": np.concatenate([_numpy(it["depth_target"]).ravel() for it in items]),
            "mask": np.concatenate([_numpy(it["depth_mask"]).ravel() for it in items])}


def class_balance(dataset, n: Optional[int] = None) -> dict[str, float]:
    """Share of labelled pixels per class name over the first ``n`` items (ignore excluded)."""
    seg = pixel_table(dataset, n)["seg"]
    counts = np.bincount(seg[seg >= 0], minlength=dataset.num_classes).astype(float)
    shares = counts / max(counts.sum(), 1.0)
    return {name: float(s) for name, s in zip(dataset.class_names, shares)}


def plot_class_balance(dataset, n: Optional[int] = None):
    """Bar chart of :func:`class_balance` (pixel share per class, in %)."""
    shares = class_balance(dataset, n)
    fig = figure((7, 3))
    ax = fig.subplots()
    ax.bar(list(shares), [100 * s for s in shares.values()],
           color=seg_palette(dataset.num_classes)[: len(shares)] / 255)
    ax.set(ylabel="% of labelled pixels", title="class balance")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return fig


def plot_depth_histogram(dataset, n: Optional[int] = None, bins: int = 50):
    """Histogram of valid depth targets (in ``dataset.depth_units``), with the invalid share."""
    table = pixel_table(dataset, n)
    valid = table["depth"][table["mask"]]
    fig = figure((7, 3))
    ax = fig.subplots()
    ax.hist(valid, bins=bins, color="tab:blue")
    ax.set(xlabel=f"depth_target ({dataset.depth_units})", ylabel="pixels",
           title=f"depth targets: {100 * (1 - table['mask'].mean()):.1f}% of pixels invalid")
    fig.tight_layout()
    return fig


def plot_depth_per_class(dataset, n: Optional[int] = None):
    """Depth distribution of each class (box plot over valid, labelled pixels): the
    seg<->depth relation the transfer nets ``seg2depth`` / ``depth2seg`` have to learn."""
    table = pixel_table(dataset, n)
    keep = table["mask"] & (table["seg"] >= 0)
    seg, depth = table["seg"][keep], table["depth"][keep]
    data = [depth[seg == k] if (seg == k).any() else np.array([np.nan])
            for k in range(dataset.num_classes)]
    fig = figure((7, 3.2))
    ax = fig.subplots()
    box = ax.boxplot(data, showfliers=False, patch_artist=True)
    for patch, colour in zip(box["boxes"], seg_palette(dataset.num_classes) / 255):
        patch.set_facecolor(colour)
    ax.set_xticks(range(1, dataset.num_classes + 1), dataset.class_names, rotation=30)
    ax.set(ylabel=f"depth ({dataset.depth_units})", title="depth per class (valid pixels)")
    fig.tight_layout()
    return fig


def plot_scaling(rows: list[dict]):
    """Training-step cost from :func:`xtc.profiling.scaling_grid` rows: ms per step against
    batch size (one line per resolution, log-log: slope 1 = cost proportional to the batch)
    and the throughput in megapixels/s (flat = no gain from bigger batches)."""
    fig = figure((10, 3.5))
    ax_ms, ax_px = fig.subplots(1, 2)
    for (h, w) in sorted({(r["height"], r["width"]) for r in rows}):
        cells = sorted((r for r in rows if (r["height"], r["width"]) == (h, w)),
                       key=lambda r: r["batch_size"])
        batch = [r["batch_size"] for r in cells]
        ax_ms.plot(batch, [r["ms_per_step"] for r in cells], marker="o", label=f"{h}x{w}")
        ax_px.plot(batch, [r["megapixels_per_s"] for r in cells], marker="o", label=f"{h}x{w}")
    ax_ms.set(xscale="log", yscale="log", xlabel="batch size", ylabel="ms per step",
              title="step time")
    ax_px.set(xscale="log", xlabel="batch size", ylabel="megapixels / s", title="throughput")
    for ax in (ax_ms, ax_px):
        ax.legend(title="resolution", fontsize=7)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- helpers


class Offline:
    """A plotly figure that survives nbconvert's HTML export offline: its output carries
    plotly's JSON mimetype (JupyterLab draws it interactively) and a ``text/html`` copy with
    plotly.js embedded (~4.8 MB, no CDN), which nbconvert keeps. Display it as a cell's last
    expression; ``.figure`` is the plotly figure."""

    def __init__(self, figure) -> None:
        self.figure = figure

    def _repr_mimebundle_(self, include=None, exclude=None):
        import plotly.io as pio

        bundle = pio.renderers["plotly_mimetype"].to_mimebundle(self.figure.to_dict())
        bundle["text/html"] = self.figure.to_html(full_html=False, include_plotlyjs=True)
        bundle["text/plain"] = f"<plotly figure: {len(self.figure.data)} traces>"
        return bundle


def offline(figure) -> Offline:
    """:class:`Offline` of ``figure``: use it for every plotly figure a report keeps."""
    return Offline(figure)


def finish(fig, path=None):
    """Tight layout, saved as PNG when ``path`` is given (reports), and returned for display."""
    from pathlib import Path

    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig


def figure(figsize):
    """A matplotlib Figure outside pyplot: shown once, as the cell's result (pyplot figures
    are shown a second time by the inline backend), freed when unreferenced, and rendered as
    PNG in IPython even under ``MPLBACKEND=agg`` (headless papermill runs)."""
    from matplotlib.figure import Figure

    try:
        from IPython import get_ipython
        from IPython.core.pylabtools import select_figure_formats

        shell = get_ipython()
        if shell is not None:
            select_figure_formats(shell, {"png"})
    except ImportError:
        pass
    return Figure(figsize=figsize)


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)


def _rgb(image: Any) -> np.ndarray:
    """``(3,H,W)`` float in [0,1] -> ``(H,W,3)`` uint8."""
    return (np.clip(_numpy(image).transpose(1, 2, 0), 0, 1) * 255).astype(np.uint8)


def _image(ax, rgb: np.ndarray, title: str) -> None:
    ax.imshow(rgb)
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def _depth(ax, depth: Any, mask: Any, title: str) -> None:
    depth = _numpy(depth).astype(float)
    if mask is not None:
        depth = np.where(_numpy(mask), depth, np.nan)
    ax.imshow(depth, cmap="viridis")
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def _legend(fig, class_names: Optional[Sequence[str]]) -> None:
    if not class_names:
        return
    from matplotlib.patches import Patch

    colours = seg_palette(len(class_names)) / 255
    fig.legend(handles=[Patch(color=c, label=n) for c, n in zip(colours, class_names)],
               loc="lower center", ncol=min(len(class_names), 7), fontsize=7, frameon=False,
               bbox_to_anchor=(0.5, -0.02))
