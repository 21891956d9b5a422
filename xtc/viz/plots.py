"""Matplotlib plots for datasets, predictions and training curves.

Every ``show_*`` / ``plot_*`` function returns a ``matplotlib.figure.Figure`` (a notebook
displays it as the cell's result; a script can ``savefig`` it). matplotlib is imported inside
the functions, so ``import xtc.viz`` stays light. Segmentation colours follow the Cityscapes
category palette for 7 classes and matplotlib's ``tab20`` otherwise; ``-1`` (ignore) is black.
Depth is drawn in the dataset's units (``dataset.depth_units``); surface normals as RGB =
(n + 1) / 2 (red = right, green = up, blue = toward the camera), invalid pixels black; any
other registered task by its ``Task.draw``. Which tasks a figure shows comes from the task
registry (:data:`xtc.tasks.TASKS`) and what the dataset or model has, never a fixed list.
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


NORMAL_LEGEND = "normals as RGB = (n+1)/2: red = right, green = up, blue = toward the camera"


def sample_tasks(dataset, tasks: Optional[Sequence[str]] = None) -> list[str]:
    """The tasks whose targets ``dataset``'s items hold (``dataset.tasks`` when it declares
    them, else every registered task, kept when its ``batch_keys`` are all in an item), in
    registry order; ``tasks`` restricts them."""
    from xtc.tasks import TASKS

    declared = getattr(dataset, "tasks", None) or TASKS.in_order()
    keys = set(dataset[0]) if len(dataset) else set()
    have = [t for t in TASKS.in_order() if t in declared
            and set(TASKS.get(t).batch_keys) <= keys]
    return [t for t in have if tasks is None or t in tasks]


def show_samples(dataset, n: int = 4, indices: Optional[Sequence[int]] = None,
                 tasks: Optional[Sequence[str]] = None):
    """``n`` items of ``dataset`` as rows: the image, then every task's target the items hold
    (:func:`sample_tasks`: segmentation, depth in ``dataset.depth_units``, surface normals
    as RGB with invalid pixels black when the dataset has ``normal_target``); ``tasks``
    restricts the columns."""
    from xtc.tasks import TASKS

    indices = list(indices) if indices is not None else list(range(min(n, len(dataset))))
    shown = sample_tasks(dataset, tasks)
    fig = figure((3.0 * (1 + len(shown)), 2.4 * len(indices)))
    axes = fig.subplots(len(indices), 1 + len(shown), squeeze=False)
    for row, index in zip(axes, indices):
        item = dataset[index]
        _image(row[0], _rgb(item["image"]), f"image #{index}")
        for ax, task in zip(row[1:], shown):
            if task == "seg":
                _image(ax, colorize_seg(item["seg_target"], dataset.num_classes), "seg_target")
            elif task == "depth":
                _depth(ax, item["depth_target"][0], item["depth_mask"][0],
                       f"depth_target ({dataset.depth_units})")
            elif task == "normal":
                _image(ax, normal_rgb(item["normal_target"], item.get("normal_mask")),
                       "normal_target (RGB = (n+1)/2)")
            else:
                spec = TASKS.get(task)(dataset.num_classes)
                batch = {k: v[None] for k, v in item.items() if torch.is_tensor(v)}
                valid = spec.valid(batch)
                _image(ax, _draw(spec, spec.target(batch)[0],
                                 None if valid is None else valid[0]), f"{task} target")
    _legend(fig, dataset.class_names if "seg" in shown else None,
            NORMAL_LEGEND if "normal" in shown else None)
    fig.tight_layout()
    return fig


@torch.no_grad()
def show_predictions(model, dataset, indices: Sequence[int] = (0, 1, 2), device: str = "cpu"):
    """Rows of the image and, for every task of the model (``model.tasks``), its GT, the
    direct prediction and, for an ``xtc`` model, every transferred prediction ``<a>2<task>``
    into it (two tasks: GT seg, seg, ``depth2seg``, GT depth, depth, ``seg2depth``).
    Normals are RGB (n + 1) / 2, the GT's invalid pixels black."""
    from xtc.analysis.predictions import predict_batch, task_specs
    from xtc.tasks import split_edge

    _, out = predict_batch(model.to(device),
                           {"image": torch.stack([dataset[i]["image"] for i in indices])})
    out = {k: v.cpu() for k, v in out.items()}
    tasks = [t for t in getattr(model, "tasks", ("seg", "depth")) if t in out]
    edges = [k for k in out if k not in tasks and _is_edge(k)]
    cols = ["image"]
    for task in tasks:
        cols += [f"{task}_target", task] + [e for e in edges if split_edge(e)[1] == task]
    fig = figure((2.3 * len(cols), 2.2 * len(indices)))
    axes = fig.subplots(len(indices), len(cols), squeeze=False)
    specs = task_specs(model)
    for r, index in enumerate(indices):
        item = dataset[index]
        for ax, col in zip(axes[r], cols):
            if col == "image":
                _image(ax, _rgb(item["image"]), f"image #{index}")
                continue
            target = col.endswith("_target")
            task = col[:-len("_target")] if target else (col if col in tasks
                                                         else split_edge(col)[1])
            if task == "seg":
                labels = item["seg_target"] if target else out[col][r]
                _image(ax, colorize_seg(labels, model.num_classes), col)
            elif task == "depth":
                mask = item["depth_mask"][0]
                value = item["depth_target"][0] if target else out[col][r, 0]
                _depth(ax, value, mask if target else None, col)
            elif task == "normal":
                value = item["normal_target"] if target else out[col][r]
                _image(ax, normal_rgb(value, item.get("normal_mask") if target else None), col)
            else:
                spec = specs[task]
                one = {k: v[None] for k, v in item.items() if torch.is_tensor(v)}
                valid = spec.valid(one) if target else None
                value = spec.target(one)[0] if target else out[col][r]
                _image(ax, _draw(spec, value, None if valid is None else valid[0]), col)
    _legend(fig, getattr(dataset, "class_names", None) if "seg" in tasks else None,
            NORMAL_LEGEND if "normal" in tasks else None)
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


# the two-task panels of plot_task_curves (task, train loss terms, eval metrics); any task
# set: task_curves(history), read from the task registry
TASK_CURVES = (
    ("segmentation", ("seg", "depth2seg"), ("miou", "pixel_acc")),
    ("depth", ("depth", "seg2depth"), ("abs_err", "rel_err")),
)
LOSS_NAMES = {"seg": "seg (cross-entropy)", "depth": "depth (L1)",
              "depth2seg": "depth2seg (transferred → seg)",
              "seg2depth": "seg2depth (transferred → depth)", "total": "total (weighted)"}
TASK_TITLES = {"seg": "segmentation"}  # column titles; other tasks: Task.title


def loss_name(term: str) -> str:
    """Words for a loss term: ``"seg (cross-entropy)"``, ``"normal (1 - cos)"``,
    ``"normal2depth (transferred → depth)"``.

    >>> loss_name("seg2normal")
    'seg2normal (transferred → normal)'
    """
    from xtc.tasks import TASKS

    if term in LOSS_NAMES:
        return LOSS_NAMES[term]
    if term in TASKS:
        unit = TASKS.get(term).loss_term_unit
        return f"{term} ({unit})" if unit else term
    if _is_edge(term):
        return f"{term} (transferred → {term.split('2', 1)[1]})"
    return term


def task_curves(history: list) -> list[tuple[str, str, list[str], list[str]]]:
    """``(task, title, loss terms, metrics)`` per task present in ``history`` (a train term
    ``train_<task>`` or one of its metrics logged), in registry order: the terms that land
    on the task (its direct loss and every transfer ``<a>2<task>`` into it: same units),
    and its table metrics (``Metric.delta_m``) that were logged on the watched split."""
    from xtc.tasks import TASKS, split_edge

    split = _watched_split(history)
    have = {k for h in history for k, v in h.items() if isinstance(v, (int, float))}
    edges = [k[len("train_"):] for k in sorted(have) if k.startswith("train_")
             and _is_edge(k[len("train_"):])]
    order = TASKS.in_order()
    out = []
    for task in order:
        spec = TASKS.get(task)
        incoming = sorted((e for e in edges if split_edge(e)[1] == task),
                          key=lambda e: order.index(split_edge(e)[0]))
        terms = [t for t in [task, *incoming] if f"train_{t}" in have]
        metrics = [m.name for m in spec.metrics if m.delta_m and f"{split}_{m.name}" in have]
        if terms or metrics:
            out.append((task, TASK_TITLES.get(task, spec.title or task), terms, metrics))
    return out


def metric_label(metric: str, depth_units: str = "depth unit") -> str:
    """``"abs_err ↓ (metres)"``: the metric, its direction and unit from the registry."""
    from xtc.tasks import TASKS

    spec = TASKS.metric(metric)
    if spec is None:
        return metric
    unit = spec.unit.replace("depth unit", depth_units)
    return f"{metric} {'↑' if spec.higher_is_better else '↓'} ({unit})"


def plot_task_curves(history: list, depth_units: str = "inverse depth", path=None):
    """Training curves one column per task present in the history (:func:`task_curves`:
    every registered task the run trained or measured), on labelled axes: the train loss
    terms that land on the task (its direct loss and the cross-task terms transferred onto
    it, ``<a>2<task>``, in the task's loss units) above, its evaluation metrics (``val_*``
    under ``train.protocol=xtc``, ``test_*`` under ``mtan`` / ``paper``) below with their
    direction (↑ higher is better, ↓ lower) and unit from the registry; a task whose metrics
    mix fractions with other units (normals: degrees) has its fractions on a right-hand
    axis. A last column has the total loss and the selection score when logged. Tasks the
    run does not have (single-task runs) are left out."""
    split = _watched_split(history)
    epochs = [h.get("epoch", i) + 1 for i, h in enumerate(history)]
    have = {k for h in history for k, v in h.items() if isinstance(v, (int, float))}
    columns = task_curves(history)
    overall = [k for k in ("train_total", "selection_score") if k in have]
    ncols = len(columns) + bool(overall)
    fig = figure((4.2 * max(ncols, 1), 6.0))
    axes = fig.subplots(2, max(ncols, 1), squeeze=False, sharex=True)

    def curve(ax, key, label, **style):
        ax.plot(epochs, [h.get(key, np.nan) for h in history], marker="o", label=label, **style)

    from xtc.tasks import TASKS

    for c, (task, title, terms, metrics) in enumerate(columns):
        top, bottom = axes[0][c], axes[1][c]
        for t in terms:
            curve(top, f"train_{t}", loss_name(t))
        top.set(title=f"{title}: train loss terms", ylabel="loss (per step, epoch mean)")
        units = {m: TASKS.metric(m).unit for m in metrics}
        fractions = [m for m in metrics if units[m] == "fraction"]
        twin = bool(fractions) and len(fractions) < len(metrics)
        colour = {m: f"C{i}" for i, m in enumerate(metrics)}  # one cycle over both axes
        for m in metrics:
            if not (twin and m in fractions):
                curve(bottom, f"{split}_{m}", metric_label(m, depth_units), color=colour[m])
        bottom.set(title=f"{title}: {split} metrics", xlabel="epoch",
                   ylabel="metric (units in legend)")
        if twin:
            other = {units[m].replace("depth unit", depth_units) for m in metrics
                     if m not in fractions}
            bottom.set_ylabel(" / ".join(sorted(other)) + " (solid)")
            right = bottom.twinx()
            for m in fractions:
                curve(right, f"{split}_{m}", metric_label(m, depth_units), ls="--",
                      color=colour[m])
            right.set_ylabel("fraction of pixels (dashed)")
            lines = bottom.get_lines() + right.get_lines()
            bottom.legend(lines, [ln.get_label() for ln in lines], fontsize=7)
        for ax in (top, bottom):
            if ax.lines and ax.get_legend() is None:
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


def _watched_split(history: list) -> str:
    return "val" if any(k.startswith("val_") for h in history for k in h) else "test"


def _is_edge(name: str) -> bool:
    from xtc.tasks import is_edge

    return is_edge(name)


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


def normals_from_depth(dataset, index: int = 0) -> dict[str, np.ndarray]:
    """Surface normals derived from the depth of synthetic-city scene ``index`` of
    ``dataset``, next to the normals the generator ships: the relation "normals are the
    derivative of depth".

    The scene is re-rendered unaugmented (:func:`xtc.data.synthetic.render_scene` with the
    dataset's seed, scene index and size), metric depth is Z = K / t (``DISPARITY_SCALE`` K,
    target t), and ``kornia.geometry.depth.depth_to_normals`` unprojects every pixel with the
    scene's pinhole camera (focal length f, principal point (c_x - 0.5, y_h - 0.5): kornia
    puts pixel centres on integers, the generator at +0.5) and takes the cross product of
    the point cloud's horizontal and vertical derivatives (3x3 Sobel). Kornia's camera frame
    (x right, y down, z forward) and outward sign are turned into xtc's (x right, y up, z
    toward the camera): n = (-n_x, n_y, n_z).

    Returns ``depth`` (H,W) metres (NaN: sky and stereo holes), ``derived`` and ``shipped``
    (H,W,3) unit normals (NaN where not comparable), ``angle`` (H,W) degrees between them
    (NaN where not comparable), ``valid`` (H,W) bool and ``median_angle`` (degrees). A pixel
    is comparable where the shipped normal is valid and every depth of its 3x3 stencil is
    valid and unclipped (depth clipped at ``MAX_TARGET`` carries no slope); at depth edges
    the stencil straddles two surfaces, so the angle there is large by construction.
    """
    import kornia

    from xtc.data import synthetic
    from xtc.tasks.normal import angle_error

    if not hasattr(dataset, "indices") or not hasattr(dataset, "seed") or \
            getattr(dataset, "name", "") != "synthetic-city":
        raise ValueError("normals_from_depth needs the synthetic city (its camera is known "
                         "per scene); got " + type(dataset).__name__)
    if not 0 <= index < len(dataset):
        raise IndexError(f"index {index} is out of range for {len(dataset)} samples")
    scene = synthetic.render_scene(dataset.seed, int(dataset.indices[index]), dataset.height,
                                   dataset.width)
    cam, target = scene["camera"], scene["depth"].astype(np.float64)
    ok = (target > 0) & (target < synthetic.MAX_TARGET - 1e-6)
    z = np.where(ok, synthetic.DISPARITY_SCALE / np.where(ok, target, 1.0), 0.0)
    k = torch.tensor([[cam["f"], 0.0, cam["c_x"] - 0.5], [0.0, cam["f"], cam["y_h"] - 0.5],
                      [0.0, 0.0, 1.0]], dtype=torch.float64)[None]
    n = kornia.geometry.depth.depth_to_normals(torch.from_numpy(z)[None, None], k)[0]
    derived = torch.stack([-n[0], n[1], n[2]])                      # (3,H,W), xtc's frame
    bad = torch.from_numpy(~ok)[None, None].double()
    stencil = torch.nn.functional.max_pool2d(bad, 3, stride=1, padding=1)[0, 0].numpy() == 0
    valid = stencil & scene["normal_mask"]
    shipped = torch.from_numpy(np.ascontiguousarray(scene["normal"].transpose(2, 0, 1))).double()
    angle = angle_error(derived[None], shipped[None])[0].numpy()
    nan = np.full_like(angle, np.nan)
    return {"depth": np.where(target > 0, synthetic.DISPARITY_SCALE / np.where(target > 0, target,
                                                                             1.0), np.nan),
            "derived": np.where(valid[..., None], derived.permute(1, 2, 0).numpy(), np.nan),
            "shipped": np.where(scene["normal_mask"][..., None], scene["normal"], np.nan),
            "angle": np.where(valid, angle, nan), "valid": valid,
            "median_angle": float(np.median(angle[valid])) if valid.any() else float("nan")}


def plot_depth_to_normals(dataset, index: int = 0, path=None):
    """Normals are the derivative of depth, on one synthetic-city scene: metric depth
    Z = K / t, the normals the dataset ships, the normals derived from depth with
    ``kornia.geometry.depth.depth_to_normals`` (:func:`normals_from_depth`), and the angle
    between the two in degrees (small everywhere except at depth edges, where the 3x3
    stencil straddles two surfaces). Normals are RGB (n + 1) / 2; black: no normal (sky,
    the ego-car hood) or, for the derived ones, a stencil touching invalid or clipped
    depth."""
    import matplotlib.pyplot as plt

    maps = normals_from_depth(dataset, index)
    fig = figure((13, 3.4))
    axes = fig.subplots(1, 4)
    grey = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
    shown = axes[0].imshow(np.ma.masked_invalid(maps["depth"]), cmap=grey,
                           norm=_log_norm(maps["depth"]))
    fig.colorbar(shown, ax=axes[0], shrink=0.8, label="depth Z (metres, log scale)")
    axes[0].set_title(f"depth Z = K / target (#{index})", fontsize=9)
    axes[1].imshow(normal_rgb(maps["shipped"]))
    axes[1].set_title("shipped normals (normal_target)", fontsize=9)
    axes[2].imshow(normal_rgb(maps["derived"]))
    axes[2].set_title("normals derived from depth (kornia)", fontsize=9)
    reds = plt.get_cmap("Reds").with_extremes(bad="lightgrey")
    shown = axes[3].imshow(np.ma.masked_invalid(maps["angle"]), cmap=reds, vmin=0, vmax=90)
    fig.colorbar(shown, ax=axes[3], shrink=0.8, label="angle (degrees)")
    axes[3].set_title(f"angle between them: median {maps['median_angle']:.2g}°", fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle(NORMAL_LEGEND + "; grey: not comparable", fontsize=8, y=0.02, va="bottom")
    return finish(fig, path)


def plot_scaling(rows: list[dict]):
    """Training-step cost from :func:`xtc.analysis.profiling.scaling_grid` rows: ms per step against
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


def normal_rgb(normals: Any, mask: Any = None) -> np.ndarray:
    """Normals ``(3,H,W)`` (a tensor or array, channels first) or ``(H,W,3)`` -> RGB
    ``(H,W,3)`` uint8 = (n + 1) / 2 of the unit vectors (red = right, green = up, blue =
    toward the camera); black where ``mask`` ``(1,H,W)`` / ``(H,W)`` is False, the vector is
    zero or NaN.

    Examples:
        >>> normal_rgb(np.array([[[0.0, 1.0, 0.0]]])).tolist()  # a floor, facing up
        [[[128, 255, 128]]]
    """
    n = _numpy(normals).astype(float)
    if n.ndim == 3 and n.shape[0] == 3 and n.shape[-1] != 3:
        n = n.transpose(1, 2, 0)
    ok = np.isfinite(n).all(-1)
    n = np.nan_to_num(n)
    length = np.linalg.norm(n, axis=-1, keepdims=True)
    ok &= length[..., 0] > 1e-12
    if mask is not None:
        ok &= _numpy(mask).reshape(ok.shape).astype(bool)
    rgb = np.clip((n / np.maximum(length, 1e-12) + 1) / 2, 0, 1)
    return (np.where(ok[..., None], rgb, 0.0) * 255).round().astype(np.uint8)


def _draw(spec, value, valid) -> np.ndarray:
    """A task's ``draw`` RGB; a task without one: its first channel as a heat map."""
    try:
        return np.asarray(spec.draw(value, valid), dtype=float)
    except NotImplementedError:
        from xtc.tasks import heat

        return heat(value.reshape(-1, *value.shape[-2:])[0].float(), valid)


def _log_norm(values: np.ndarray):
    from matplotlib.colors import LogNorm

    finite = values[np.isfinite(values) & (values > 0)]
    return LogNorm(float(finite.min()), float(finite.max())) if finite.size else None


def _legend(fig, class_names: Optional[Sequence[str]], note: Optional[str] = None) -> None:
    """The class colours (and ``note``, e.g. how normals are coloured) under the figure."""
    if not class_names and not note:
        return
    from matplotlib.patches import Patch

    handles = []
    if class_names:
        colours = seg_palette(len(class_names)) / 255
        handles = [Patch(color=c, label=n) for c, n in zip(colours, class_names)]
    if note:
        handles.append(Patch(color="none", label=note))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=7,
               frameon=False, bbox_to_anchor=(0.5, -0.02))
