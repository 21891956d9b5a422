"""The prediction explorer: image -> direct vs transferred predictions, errors and energy.

Three layers, so that the part that matters is testable without a browser:

* :func:`load_run` (pure): a trained run folder -> :class:`LoadedRun` (model from
  ``checkpoints/best.pt``, its config, datasets built on demand without augmentation).
  Relative run paths resolve from the repository root (:func:`resolve_run`), absolute ones
  are used as they are; runs are labelled by method, cross-task term and seed
  (:func:`run_label`, e.g. ``"xtc consistency, seed 0"``).
* :func:`predict` / :func:`render` (pure): one sample -> numpy panels -> a plotly Figure.
  Panels (:func:`panel_names`), for every task ``t`` the run has (``model.tasks``, read from
  the task registry): GT ``<t>_target``, direct ``<t>``, transferred ``<a>2<t>`` for every
  incoming edge of the run's transfer graph; one error map per task (``abs_err`` for depth,
  ``seg_err`` for segmentation, ``normal_err`` (angle, degrees) for normals, ``<t>_err``
  otherwise) and one consistency-energy map per task that receives transfers
  (``<t>_energy``, the mean over its incoming edges, :func:`xtc.metrics.consistency_energy_maps`).
  Two tasks give the paper's eleven panels: image, GT seg, direct seg, transferred seg
  (``depth2seg``), GT depth, direct depth, transferred depth (``seg2depth``), abs depth
  error, seg error, seg and depth energy. Runs without transfer nets (``mtl``, ``stl-*``)
  omit the panels they cannot have.
* :class:`Explorer`: a thin ipywidgets UI (run dropdown, split toggle, sample slider) that
  re-renders into an ``Output``; and :func:`static_gallery` (matplotlib) for headless runs,
  where papermill keeps no widget state.

Depth panels have a colour bar in the dataset's ``depth_units``, error and energy maps use
the colour maps of :mod:`xtc.viz.alignment_plots` (``ERROR_CMAP``, ``ENERGY_CMAP``) with the
units their task declares (``Task.error_unit``, ``Task.energy_unit``), seg panels a class
legend (class names in their colours) and hover values, normals are drawn as RGB =
(n + 1) / 2 (red = right, green = up, blue = toward the camera; invalid black) with the
vector on hover. With more than two tasks, :func:`render` and :func:`static_gallery` lay the
panels out one row per task.
"""

from __future__ import annotations

import dataclasses
import html
import json
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from xtc import checkpoint, train
from xtc.analysis.predictions import error_maps, predict_batch, task_specs, valid_mask
from xtc.config import from_dict
from xtc.errors import MissingFileError
from xtc.metrics import consistency_energy_maps
from xtc.tasks import TASKS, Task, split_edge
from xtc.viz.alignment_plots import ENERGY_CMAP, ERROR_CMAP
from xtc.viz.plots import colorize_seg, figure, seg_palette
from xtc.viz.plots import normal_rgb as _normal_rgb

SPLITS = ("train", "val", "test")
# The two-task panels (the paper's graph), name -> (kind, needs): kinds rgb | seg | depth |
# normal | draw | error | energy. Any other task set: panel_specs(run).
PANELS = {
    "image": ("rgb", set()), "seg_target": ("seg", {"seg"}), "seg": ("seg", {"seg"}),
    "depth2seg": ("seg", {"depth2seg"}), "depth_target": ("depth", {"depth"}),
    "depth": ("depth", {"depth"}), "seg2depth": ("depth", {"seg2depth"}),
    "abs_err": ("error", {"depth"}), "seg_err": ("error", {"seg"}),
    "seg_energy": ("energy", {"depth2seg"}), "depth_energy": ("energy", {"seg2depth"}),
}
TITLES = {"image": "image", "seg_target": "GT seg", "seg": "direct seg",
          "depth2seg": "transferred seg (depth2seg)", "depth_target": "GT depth",
          "depth": "direct depth", "seg2depth": "transferred depth (seg2depth)",
          "abs_err": "|depth error|", "seg_err": "seg error", "seg_energy": "seg energy (KL)",
          "depth_energy": "depth energy |seg2depth-depth|"}
CMAPS = {"depth": "viridis", "error": ERROR_CMAP, "energy": ENERGY_CMAP}  # matplotlib names
# the error panel of a task: the depth metric's and the seg map's historic names, else <t>_err
ERROR_PANELS = {"depth": "abs_err", "seg": "seg_err"}
# how a task's values are drawn; a task not named here is drawn by its Task.draw (RGB)
VALUE_KINDS = {"seg": "seg", "depth": "depth", "normal": "normal"}
NORMAL_RGB = "RGB = (n+1)/2: red right, green up, blue toward the camera"


@dataclasses.dataclass(frozen=True)
class Panel:
    """One explorer panel: what it draws (``kind``), for which task, its title, and the
    colour-bar text of a heat map (``unit``; empty for images)."""

    name: str
    kind: str
    task: Optional[str]
    title: str
    unit: str = ""
    role: str = ""  # image | target | direct | transferred | error | energy


def error_panel(task: str) -> str:
    """The name of ``task``'s error panel: ``abs_err`` (depth), ``seg_err``, ``normal_err``,
    ``<task>_err`` for any other task.

    >>> error_panel("depth"), error_panel("normal")
    ('abs_err', 'normal_err')
    """
    return ERROR_PANELS.get(task, f"{task}_err")


def units(name: str, depth_units: str, incoming: Optional[Sequence[str]] = None) -> str:
    """Colour-bar title of a heat-map panel: what its values are, in which units; from the
    task registry (``Task.error_unit`` / ``Task.energy_unit``, the dataset's depth units for
    depth). ``incoming``: the edges into the panel's task (for an energy averaged over
    several transfers); default the paper's single edge. Empty for RGB and seg panels.

    >>> units("abs_err", "inverse depth")
    '|error| (inverse depth)'
    >>> units("normal_err", "metres"), units("normal_energy", "metres")
    ('angle error (degrees)', '1 - cos(transferred, direct)')
    """
    legacy = {"depth_target": depth_units, "depth": depth_units, "seg2depth": depth_units,
              "abs_err": f"|error| ({depth_units})", "seg_err": "wrong (1) / right (0)",
              "seg_energy": "KL (nats)",
              "depth_energy": f"|seg2depth - depth| ({depth_units})"}
    task, role = _parse(name)
    if task is None or task not in TASKS:
        return legacy.get(name, "")
    spec = TASKS.get(task)
    text = ""
    if role in ("target", "direct", "transferred"):
        text = depth_units if VALUE_KINDS.get(task) == "depth" else ""
    elif role == "error":
        text = legacy.get(name) or spec.error_unit
    elif role == "energy":
        edges = list(incoming) if incoming is not None else None
        if task == "depth" and (edges is None or len(edges) == 1):
            text = f"|{edges[0] if edges else 'seg2depth'} - depth| ({depth_units})"
        else:
            text = spec.energy_unit or "energy"  # the title says "mean of k transfers"
    return text.replace("depth unit", depth_units)


def _parse(name: str) -> tuple[Optional[str], str]:
    """(task, role) of a panel name: ``seg_target`` -> (seg, target), ``abs_err`` ->
    (depth, error), ``seg2depth`` -> (depth, transferred), ``image`` -> (None, image)."""
    if name == "image":
        return None, "image"
    for task, panel in ERROR_PANELS.items():
        if name == panel:
            return task, "error"
    for suffix, role in (("_target", "target"), ("_err", "error"), ("_energy", "energy")):
        if name.endswith(suffix) and name[:-len(suffix)] in TASKS:
            return name[:-len(suffix)], role
    if name in TASKS:
        return name, "direct"
    try:
        source, target = split_edge(name)
    except ValueError:
        return None, ""
    return (target, "transferred") if source in TASKS and target in TASKS else (None, "")


def resolve_run(run_dir: str | Path) -> Path:
    """The absolute run folder for ``run_dir``: relative paths resolve from the repository
    root (as in ``xtc app --run runs/demo/X`` or a notebook under ``notebooks/``), absolute
    ones (and ``~``) are used as they are. Raises FileNotFoundError naming the resolved path
    when it is not a folder."""
    from xtc.runtime import repo_path

    path = Path(run_dir).expanduser()
    path = path.resolve() if path.is_absolute() else repo_path(str(path))
    if not path.is_dir():
        raise MissingFileError(
            f"run folder {path} does not exist" + ("" if Path(run_dir).expanduser().is_absolute()
            else f" (relative run paths resolve from the repository root {repo_path()})"))
    return path


def run_label(run_dir: str | Path) -> str:
    """``"xtc consistency, seed 0"`` / ``"mtl, seed 1"``: method, cross-task term (xtc only)
    and seed of a run, from its ``results.json`` params, else its checkpoint's config, else
    the folder name."""
    run_dir = Path(run_dir)
    params: dict = {}
    try:
        params = json.loads((run_dir / "results.json").read_text()).get("params", {})
    except (OSError, ValueError, AttributeError):
        pass
    if "model.method" not in params:
        try:
            from xtc.config import flatten

            path = _checkpoint_path(run_dir, "best")
            params = flatten(from_dict(checkpoint.load(path)["config"]))
        except Exception:  # an unreadable run is labelled by its folder; load_run says why
            return run_dir.name
    return _label(params.get("model.method"), params.get("loss.cross_task"),
                  params.get("train.seed"))


def run_labels(runs: Sequence[str | Path]) -> list[str]:
    """:func:`run_label` of each run; runs that share a label get their folder appended
    (``"xtc consistency, seed 0 (demo/a)"``) so the run dropdown tells them apart."""
    labels = [run_label(r) for r in runs]
    return [f"{label} ({Path(r).parent.name}/{Path(r).name})" if labels.count(label) > 1
            else label for label, r in zip(labels, runs)]


def _label(method, cross_task, seed) -> str:
    text = f"{method} {cross_task}" if method == "xtc" and cross_task else str(method)
    return text + ("" if seed is None else f", seed {seed}")


class LoadedRun(train.LoadedRun):
    """A trained run ready to explore (:func:`xtc.train.load_run`, on the CPU), with the
    label the pickers show; datasets are built on first use per split, never augmented."""

    @property
    def label(self) -> str:
        """Method, cross-task term and seed, e.g. ``"xtc consistency, seed 0"``."""
        return _label(self.method, self.config.loss.cross_task, self.config.train.seed)

    @property
    def checkpoint(self) -> Path:
        return self.checkpoint_path

    def dataset(self, split: str):
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is not valid; choose one of {list(SPLITS)}")
        return super().dataset(split)


def load_run(run_dir: str | Path, which: str = "best") -> LoadedRun:
    """Load ``run_dir/checkpoints/{which}.pt`` (falls back to ``last.pt``) into a model on CPU.

    The config comes from the checkpoint itself, so the model is rebuilt exactly as trained.
    ``run_dir`` resolves as in :func:`resolve_run`; errors name the resolved path.
    """
    run_dir = resolve_run(run_dir)
    path = _checkpoint_path(run_dir, which)
    loaded = train.load_run(path, device="cpu", overrides=["train.device=cpu"])
    return LoadedRun(**{f.name: getattr(loaded, f.name) for f in dataclasses.fields(loaded)})


def _checkpoint_path(run_dir: Path, which: str) -> Path:
    path = run_dir / "checkpoints" / f"{which}.pt"
    if not path.is_file() and (run_dir / "checkpoints" / "last.pt").is_file():
        path = run_dir / "checkpoints" / "last.pt"
    if not path.is_file():
        raise MissingFileError(f"{run_dir} holds no checkpoints/{which}.pt or last.pt; pass "
                               f"the folder a training run wrote (xtc train --out DIR)")
    return path


# --------------------------------------------------------------------------- panels
def _overrides(spec: Task, method: str) -> bool:
    """Whether the task implements ``method`` (the base class raises NotImplementedError)."""
    return getattr(type(spec), method) is not getattr(Task, method)


def _edges(run) -> list[tuple[str, str, str]]:
    """(name, source, target) of every transfer net of the run (none without them)."""
    model = run.model
    return list(getattr(model, "edges", [])) if getattr(model, "transfer", None) is not None else []


def incoming(run, task: str) -> list[str]:
    """The edges ``<a>2<task>`` of the run, in the model's edge order."""
    return [name for name, _, target in _edges(run) if target == task]


def panel_specs(run, depth_units: Optional[str] = None) -> dict[str, Panel]:
    """Every panel the run can show, in :func:`panel_names` order, with kind, task, title
    and colour-bar unit (``depth_units`` default: the test split's)."""
    if depth_units is None:
        depth_units = run.dataset("test").depth_units
    tasks = list(run.model.tasks)
    specs = task_specs(run.model)
    panels = [Panel("image", "rgb", None, "image", role="image")]
    for t in tasks:
        kind = VALUE_KINDS.get(t, "draw")
        unit = units(t, depth_units)
        panels.append(Panel(f"{t}_target", kind, t, TITLES.get(f"{t}_target", f"GT {t}"),
                            unit, "target"))
        panels.append(Panel(t, kind, t, f"direct {t}", unit, "direct"))
        for name in incoming(run, t):
            panels.append(Panel(name, kind, t, f"transferred {t} ({name})", unit,
                                "transferred"))
    errors = [t for t in tasks if _overrides(specs[t], "error_map")]
    errors.sort(key=lambda t: ({"depth": 0, "seg": 1}.get(t, 2), tasks.index(t)))
    for t in errors:
        name = error_panel(t)
        title = TITLES.get(name, "normal angle error" if t == "normal" else f"{t} error")
        panels.append(Panel(name, "error", t, title, units(name, depth_units), "error"))
    for t in tasks:
        edges = incoming(run, t)
        if not edges:
            continue
        name = f"{t}_energy"
        if len(edges) > 1:
            title = f"{t} energy (mean of {len(edges)} transfers)"
        elif t == "seg":
            title = TITLES["seg_energy"]
        elif t == "depth":
            title = f"depth energy |{edges[0]}-depth|"
        else:
            title = f"{t} energy ({edges[0]})"
        panels.append(Panel(name, "energy", t, title, units(name, depth_units, edges),
                            "energy"))
    return {p.name: p for p in panels}


def panel_names(run: LoadedRun) -> list[str]:
    """The panels :func:`render` draws for this run: the image; per task its GT, direct and
    transferred predictions (``<a>2<t>`` only for ``xtc``); the error maps; the energy maps
    (``xtc``). Two tasks: the eleven panels of :data:`PANELS`, in that order."""
    return list(panel_specs(run, depth_units="depth unit"))


def prediction_panels(run: LoadedRun) -> list[str]:
    """The image and every task's GT, direct and transferred predictions, without error and
    energy maps (what a training report's gallery shows); for two tasks the panels of
    :data:`PREDICTION_PANELS` the run has."""
    return [n for n, p in panel_specs(run, depth_units="depth unit").items()
            if p.role in ("image", "target", "direct", "transferred")]


def _cpu(tensors: dict) -> dict:
    return {k: v.cpu() for k, v in tensors.items()}


def _value_map(kind: str, spec: Task, value: torch.Tensor,
               valid: Optional[torch.Tensor]) -> np.ndarray:
    """One prediction or target (no batch dim) as the panel's numpy map: seg labels (-1
    ignore), depth (H,W) float (NaN invalid), normals (H,W,3) unit vectors (NaN invalid),
    other tasks their ``Task.draw`` RGB (H,W,3) in [0,1] (invalid black)."""
    ok = None if valid is None else valid.numpy()
    if kind == "seg":
        labels = value.argmax(0) if value.is_floating_point() else value
        return labels.numpy()
    if kind == "depth":
        depth = value.reshape(value.shape[-2:]).float().numpy()
        return depth if ok is None else np.where(ok, depth, np.nan)
    if kind == "normal":
        n = torch.nn.functional.normalize(value.float(), dim=0, eps=1e-12).permute(1, 2, 0).numpy()
        return n if ok is None else np.where(ok[..., None], n, np.nan)
    try:
        return np.asarray(spec.draw(value, valid), dtype=float)
    except NotImplementedError:  # a task without a drawing: its first channel as a heat map
        from xtc.tasks import heat

        return heat(value.reshape(-1, *value.shape[-2:])[0].float(), valid)


@torch.no_grad()
def predict(run: LoadedRun, split: str, index: int) -> dict[str, np.ndarray]:
    """Panel name -> map for every :func:`panel_names` panel: ``image`` ``(H,W,3)`` uint8,
    seg panels labels (-1 ignore), depth-like panels ``(H,W)`` float (NaN where the target
    is invalid), normal panels ``(H,W,3)`` unit vectors (NaN where invalid), error and
    energy maps ``(H,W)`` float (errors NaN where the task has no ground truth; units:
    :func:`units`)."""
    dataset = run.dataset(split)
    if not 0 <= index < len(dataset):
        raise IndexError(f"index {index} is out of range for the {split} split "
                         f"({len(dataset)} samples)")
    item = dataset[index]
    batch, out = predict_batch(run.model, {k: v[None] for k, v in item.items()
                                           if torch.is_tensor(v)})
    batch, out = _cpu(batch), _cpu(out)
    specs = task_specs(run.model)
    panels = panel_specs(run, depth_units=dataset.depth_units)
    maps: dict[str, np.ndarray] = {
        "image": (item["image"].permute(1, 2, 0).clamp(0, 1).numpy() * 255).astype(np.uint8)}
    energy = consistency_energy_maps(out) if any(p.role == "energy" for p in panels.values()) \
        else {}
    errors = (error_maps(out, batch, specs) if any(p.role == "error" for p in panels.values())
              else {})
    for name, panel in panels.items():
        t = panel.task
        if panel.role == "target":
            valid = valid_mask(t, specs[t], batch)
            valid = None if valid is None else valid[0]
            maps[name] = _value_map(panel.kind, specs[t], specs[t].target(batch)[0], valid)
        elif panel.role in ("direct", "transferred"):
            maps[name] = _value_map(panel.kind, specs[t], out[name][0], None)
        elif panel.role == "error":
            maps[name] = errors[t][0].numpy()
        elif panel.role == "energy":
            maps[name] = energy[t][0].numpy()
    return maps


def _layout(run, names: Sequence[str], columns: int) -> list[list[Optional[str]]]:
    """Rows of panel names (None: an empty cell). Up to two tasks: ``names`` in reading
    order, ``columns`` per row; more tasks: one row per task (its GT, direct, transferred,
    error and energy panels), the image first in the first row."""
    tasks = list(run.model.tasks)
    if len(tasks) <= 2:
        return [list(names[i:i + columns]) for i in range(0, len(names), columns)]
    panels = panel_specs(run, depth_units="depth unit")
    rows = [[n for n in names if n in panels and panels[n].task == t] for t in tasks]
    rows = [r for r in rows if r]
    lead = [n for n in names if n in panels and panels[n].task is None]
    width = max((len(r) for r in rows), default=0) + bool(lead)
    grid = []
    for i, row in enumerate(rows):
        first = (lead[:1] if i == 0 else [None]) if lead else []
        cells = first + row
        grid.append(cells + [None] * (width - len(cells)))
    if not rows and lead:
        grid = [lead]
    return grid


def render(run: LoadedRun, split: str = "test", index: int = 0, columns: int = 4):
    """One sample of ``run`` as a plotly Figure with one subplot per :func:`panel_names`
    (more than two tasks: one row per task, see :func:`_layout`).

    Seg panels use the dataset palette (hover shows the class; the title carries the class
    legend), depth panels share one colour scale with a colour bar in the dataset's depth
    units, errors and energies have their own scales and colour bars (see :func:`units`),
    normals are RGB (n + 1) / 2 with the vector on hover. Hover shows each value with its
    unit.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    maps = predict(run, split, index)
    dataset = run.dataset(split)
    depth_units = dataset.depth_units
    panels = panel_specs(run, depth_units)
    names = list(maps)
    grid = _layout(run, names, columns)
    rows, cols = len(grid), max(len(r) for r in grid)
    titles = [panels[n].title if n else ""
              for row in grid for n in row + [None] * (cols - len(row))]
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles,
                        horizontal_spacing=0.09 if cols <= 4 else 0.36 / cols,
                        vertical_spacing=0.08 if rows <= 3 else 0.24 / rows)
    fig.layout.annotations = [a for a in fig.layout.annotations if a.text]
    depth_range = _range([maps[n] for n in names if panels[n].kind == "depth"])
    where = "(%{x}, %{y}) "
    for r, row in enumerate(grid):
        for c, name in enumerate(row):
            if name is None:
                continue
            panel, value = panels[name], maps[name]
            cell = r * cols + c + 1
            extra = f"<extra>{panel.title}</extra>"
            if panel.kind == "rgb":
                trace = go.Image(z=value, name=name, hovertemplate=where + "rgb %{z}" + extra)
            elif panel.kind == "seg":
                trace = go.Image(z=colorize_seg(value, run.num_classes), name=name,
                                 customdata=np.asarray(dataset.class_names + ["ignore"])[value],
                                 hovertemplate=where + "%{customdata}" + extra)
            elif panel.kind == "normal":
                text = np.array([[("n = ({:.2f}, {:.2f}, {:.2f})".format(*v)
                                   if np.isfinite(v).all() else "no ground truth") for v in line]
                                 for line in value], dtype=object)
                trace = go.Image(z=_normal_rgb(value), name=name, customdata=text,
                                 hovertemplate=where + "%{customdata}" + extra)
            elif panel.kind == "draw":
                trace = go.Image(z=(np.clip(value, 0, 1) * 255).astype(np.uint8), name=name,
                                 hovertemplate=where + "rgb %{z}" + extra)
            else:
                zmin, zmax = depth_range if panel.kind == "depth" else _range([value])
                unit = panel.unit
                xd, yd = _domain(fig, cell)
                trace = go.Heatmap(
                    z=value, name=name, zmin=zmin, zmax=zmax,
                    colorscale=_plotly_scale(CMAPS[panel.kind]),
                    hovertemplate=where + "%{z:.4g} " + unit + extra,
                    colorbar=dict(title=dict(text=unit, side="right", font=dict(size=10)),
                                  x=xd[1] + 0.005, xanchor="left", y=sum(yd) / 2,
                                  len=yd[1] - yd[0], thickness=10, tickfont=dict(size=9)))
            fig.add_trace(trace, row=r + 1, col=c + 1)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False, constrain="domain")
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False, autorange="reversed",
                     constrain="domain")
    for i in range(1, rows * cols + 1):  # keep pixels square
        fig.layout[f"yaxis{i if i > 1 else ''}"].scaleanchor = f"x{i if i > 1 else ''}"
    title = f"{run.label} · {split} #{index} · depth in {depth_units}"
    if any(panels[n].kind == "normal" for n in names):
        title += f" · normals as {NORMAL_RGB}"
    if any(panels[n].kind == "seg" for n in names):
        title += f"<br><sup>{class_legend(run, dataset)}</sup>"
    fig.update_layout(title=title, height=260 * rows + 90, width=max(1150, 215 * cols + 160),
                      plot_bgcolor="lightgrey",  # NaN (invalid / ignored) shows grey, as in 04
                      margin=dict(l=10, r=10, t=90, b=10))
    return fig


def class_legend(run: LoadedRun, dataset=None) -> str:
    """The seg classes as coloured squares and names (plotly/HTML markup), e.g.
    ``<span style="color:rgb(128,64,128)">■</span> flat ...``."""
    dataset = dataset if dataset is not None else run.dataset("test")
    palette = seg_palette(run.num_classes)
    return "  ".join(f'<span style="color:rgb({r},{g},{b})">■</span> {name}'
                     for name, (r, g, b) in zip(dataset.class_names, palette.tolist()))


PREDICTION_PANELS = ("image", "seg_target", "seg", "depth2seg", "depth_target", "depth",
                     "seg2depth")  # direct and transferred predictions, without error maps
# (two tasks; static_gallery(panels=PREDICTION_PANELS) shows prediction_panels(run), so a
# three-task run's gallery gets its normal panels and all six transfers too)


def static_gallery(run: LoadedRun, split: str = "test", indices: Sequence[int] = (0, 1, 2),
                   panels: Optional[Sequence[str]] = None):
    """Several samples as one matplotlib figure: what a headless run (papermill, reports)
    keeps in place of the interactive explorer. Up to two tasks: rows = samples, columns =
    panels; more tasks: one row per (sample, task), see :func:`_layout`. Heat-map titles
    carry their units (:func:`units`); the class legend sits under the figure.

    ``panels``: a subset of :func:`panel_names`, default all; panels the run does not have
    are left out. :data:`PREDICTION_PANELS` means :func:`prediction_panels` (the
    predictions of every task the run has, without error and energy maps)."""
    from matplotlib.patches import Patch

    if panels is not None and tuple(panels) == PREDICTION_PANELS:
        panels = prediction_panels(run)
    names = [n for n in panel_names(run) if panels is None or n in panels]
    dataset = run.dataset(split)
    specs = panel_specs(run, dataset.depth_units)
    grid = _layout(run, names, len(names))
    per_sample, cols = len(grid), max(len(r) for r in grid)
    by_task = len(run.model.tasks) > 2
    aspect = run.config.data.height / run.config.data.width  # rows as tall as the images
    title_h = 0.45 if by_task else 0.35  # every row carries titles when rows are tasks
    fig = figure((2.1 * cols, (2.1 * aspect + title_h) * len(indices) * per_sample + 1.1))
    axes = fig.subplots(len(indices) * per_sample, cols, squeeze=False)
    for s, index in enumerate(indices):
        maps = predict(run, split, index)
        depth_range = _range([maps[n] for n in names if specs[n].kind == "depth"])
        for g, row in enumerate(grid):
            r = s * per_sample + g
            for c in range(cols):
                ax = axes[r][c]
                ax.set_axis_off()
                name = row[c] if c < len(row) else None
                if name is None:
                    continue
                panel, value = specs[name], maps[name]
                if panel.kind in ("rgb", "seg", "normal", "draw"):
                    ax.imshow(value if panel.kind == "rgb" else
                              colorize_seg(value, run.num_classes) if panel.kind == "seg" else
                              _normal_rgb(value) if panel.kind == "normal" else
                              np.clip(value, 0, 1))
                else:
                    vmin, vmax = depth_range if panel.kind == "depth" else _range([value])
                    ax.imshow(value, vmin=vmin, vmax=vmax, cmap=CMAPS[panel.kind])
                if r == 0 or by_task:
                    unit = f"\n[{panel.unit}]" if panel.unit else ""
                    ax.set_title(panel.title + unit, fontsize=6)
        first = axes[s * per_sample][0]
        first.text(-0.1, 0.5, f"#{index}", transform=first.transAxes, ha="right")
    palette = seg_palette(run.num_classes) / 255
    fig.legend(handles=[Patch(color=c, label=n) for n, c in zip(dataset.class_names, palette)],
               loc="lower center", ncol=min(len(dataset.class_names), 10), fontsize=7,
               frameon=False)
    title = f"{run.label} · {split} · depth in {dataset.depth_units}"
    if any(specs[n].kind == "normal" for n in names):
        title += f" · normals as {NORMAL_RGB}"
    fig.suptitle(title, fontsize=9)
    height = fig.get_figheight()  # margins in inches: the legend below, titles above
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.5 / height,
                        top=1 - (0.85 if by_task else 0.6) / height,
                        wspace=0.05, hspace=0.45 if by_task else 0.15)
    return fig


def find_runs(root: str | Path) -> list[Path]:
    """Run folders under ``root`` (any depth) that hold ``checkpoints/best.pt`` or ``last.pt``."""
    root = Path(root)
    found = {p.parent.parent for pattern in ("best.pt", "last.pt")
             for p in root.glob(f"**/checkpoints/{pattern}")}
    return sorted(found)


class Explorer:
    """Run dropdown + split toggle + sample slider -> :func:`render` into an ``Output``.

    ``runs`` is one run folder or a list of them; loaded runs are cached. Display the
    explorer as a cell's last expression (it has ``_ipython_display_``) or via ``.widget``.
    """

    def __init__(self, runs: Any, split: str = "test", index: int = 0) -> None:
        import ipywidgets as w

        runs = [runs] if isinstance(runs, (str, Path)) else list(runs)
        runs = list(dict.fromkeys(str(resolve_run(r)) for r in runs))  # first one is shown
        if not runs:
            raise ValueError("Explorer needs at least one run folder (see xtc.viz.find_runs)")
        self._cache: dict[str, LoadedRun] = {}
        self.run_select = w.Dropdown(options=list(zip(run_labels(runs), runs)),
                                     description="run", layout=w.Layout(width="28em"))
        self.split = w.ToggleButtons(options=list(SPLITS), value=split, description="split")
        self.index = w.IntSlider(value=index, min=0, max=0, description="sample",
                                 continuous_update=False)
        self.status = w.HTML()
        self.output = w.Output()
        self.widget = w.VBox([w.HBox([self.run_select, self.split]), self.index, self.status,
                              self.output])
        self._sync_slider()
        self.index.value = index
        self.run_select.observe(self._on_change, names="value")
        self.split.observe(self._on_change, names="value")
        self.index.observe(self._update, names="value")
        self._update()

    @property
    def run(self) -> LoadedRun:
        key = self.run_select.value
        if key not in self._cache:
            self._cache[key] = load_run(key)
        return self._cache[key]

    def figure(self):
        """The figure currently shown."""
        return render(self.run, self.split.value, self.index.value)

    def _sync_slider(self) -> None:
        self.index.max = len(self.run.dataset(self.split.value)) - 1

    def _on_change(self, change=None) -> None:
        self._sync_slider()
        self._update()

    def _update(self, change=None) -> None:
        fig = self.figure()
        self.status.value = (f"<b>{html.escape(self.run.label)}</b> · "
                             f"{self.split.value} #{self.index.value} · "
                             f"<code>{html.escape(str(self.run.run_dir))}</code>")
        # Set the Output's state directly (no `with output:` capture): headless executors
        # (nbclient/papermill) route captured output through hooks that can stall.
        bundle = {"application/vnd.plotly.v1+json": json.loads(fig.to_json()),
                  "text/plain": fig.layout.title.text}
        self.output.outputs = ({"output_type": "display_data", "data": bundle, "metadata": {}},)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


# --------------------------------------------------------------------------- helpers


def _range(maps: list[np.ndarray]) -> tuple[Optional[float], Optional[float]]:
    values = [m[np.isfinite(m)] for m in maps if m is not None]
    values = np.concatenate(values) if values else np.array([])
    return (float(values.min()), float(values.max())) if values.size else (None, None)


def _domain(fig, n: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """x and y domains (paper coordinates) of subplot ``n`` (1-based)."""
    suffix = "" if n == 1 else str(n)
    return tuple(fig.layout[f"xaxis{suffix}"].domain), tuple(fig.layout[f"yaxis{suffix}"].domain)


def _plotly_scale(cmap: str, steps: int = 11) -> list:
    """A matplotlib colour map as a plotly colour scale, so both draw the same colours."""
    from matplotlib import colormaps

    colours = colormaps[cmap](np.linspace(0, 1, steps))[:, :3] * 255
    return [[float(t), "rgb({:.0f},{:.0f},{:.0f})".format(*c)]
            for t, c in zip(np.linspace(0, 1, steps), colours)]

