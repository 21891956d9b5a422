"""The prediction explorer: image -> direct vs transferred predictions, errors and energy.

Three layers, so that the part that matters is testable without a browser:

* :func:`load_run` (pure): a trained run folder -> :class:`LoadedRun` (model from
  ``checkpoints/best.pt``, its config, datasets built on demand without augmentation).
  Relative run paths resolve from the repository root (:func:`resolve_run`), absolute ones
  are used as they are; runs are labelled by method, cross-task term and seed
  (:func:`run_label`, e.g. ``"xtc consistency, seed 0"``).
* :func:`predict` / :func:`render` (pure): one sample -> numpy panels -> a plotly Figure.
  Panels: image, GT seg, direct seg, transferred seg (``depth2seg``), GT depth, direct depth,
  transferred depth (``seg2depth``), abs depth error, seg error, seg and depth consistency
  energy. Runs without transfer nets (``mtl``, ``stl-*``) omit the panels they cannot have.
* :class:`Explorer`: a thin ipywidgets UI (run dropdown, split toggle, sample slider) that
  re-renders into an ``Output``; and :func:`static_gallery` (matplotlib) for headless runs,
  where papermill keeps no widget state.

Depth panels have a colour bar in the dataset's ``depth_units``, error and energy maps use
the colour maps of :mod:`xtc.viz.alignment_plots` (``ERROR_CMAP``, ``ENERGY_CMAP``) with
their units, seg panels a class legend (class names in their colours) and hover values.
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
from xtc.config import from_dict
from xtc.metrics import consistency_energy_maps
from xtc.viz.alignment_plots import ENERGY_CMAP, ERROR_CMAP
from xtc.viz.plots import figure, colorize_seg, seg_palette

SPLITS = ("train", "val", "test")
# panel name -> (kind, needs): kinds rgb | seg | depth | error | energy
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


def units(name: str, depth_units: str) -> str:
    """Colour-bar title of a heat-map panel: what its values are, in which units.

    >>> units("abs_err", "inverse depth")
    '|error| (inverse depth)'
    """
    return {"depth_target": depth_units, "depth": depth_units, "seg2depth": depth_units,
            "abs_err": f"|error| ({depth_units})", "seg_err": "wrong (1) / right (0)",
            "seg_energy": "KL (nats)",
            "depth_energy": f"|seg2depth - depth| ({depth_units})"}[name]


def resolve_run(run_dir: str | Path) -> Path:
    """The absolute run folder for ``run_dir``: relative paths resolve from the repository
    root (as in ``xtc app --run runs/demo/X`` or a notebook under ``notebooks/``), absolute
    ones (and ``~``) are used as they are. Raises FileNotFoundError naming the resolved path
    when it is not a folder."""
    from xtc.viz import repo_path

    path = Path(run_dir).expanduser()
    path = path.resolve() if path.is_absolute() else repo_path(str(path))
    if not path.is_dir():
        raise FileNotFoundError(
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
        raise FileNotFoundError(f"{run_dir} holds no checkpoints/{which}.pt or last.pt; pass "
                                f"the folder a training run wrote (xtc train --out DIR)")
    return path


def panel_names(run: LoadedRun) -> list[str]:
    """The panels :func:`render` draws for this run (transferred ones only for ``xtc``)."""
    have = {"seg", "depth"} & set(run.model.tasks)
    if run.model.transfer is not None:
        have |= {"seg2depth", "depth2seg"}
    return [name for name, (_, needs) in PANELS.items() if needs <= have]


@torch.no_grad()
def predict(run: LoadedRun, split: str, index: int) -> dict[str, np.ndarray]:
    """Panel name -> 2-D map (``image``: ``(H,W,3)`` uint8, seg panels: labels, depth-like
    panels: float with NaN where the target is invalid or ignored)."""
    dataset = run.dataset(split)
    if not 0 <= index < len(dataset):
        raise IndexError(f"index {index} is out of range for the {split} split "
                         f"({len(dataset)} samples)")
    item = dataset[index]
    out = {k: v.float() for k, v in run.model(item["image"][None]).items()}
    mask = item["depth_mask"][0].numpy()
    seg_t = item["seg_target"].numpy()
    maps: dict[str, np.ndarray] = {
        "image": (item["image"].permute(1, 2, 0).clamp(0, 1).numpy() * 255).astype(np.uint8),
        "seg_target": seg_t, "depth_target": np.where(mask, item["depth_target"][0].numpy(),
                                                      np.nan)}
    if "seg" in out:
        maps["seg"] = out["seg"][0].argmax(0).numpy()
        maps["seg_err"] = np.where(seg_t >= 0, (maps["seg"] != seg_t).astype(float), np.nan)
    if "depth" in out:
        maps["depth"] = out["depth"][0, 0].numpy()
        maps["abs_err"] = np.where(mask, np.abs(maps["depth"] - maps["depth_target"]), np.nan)
    if "depth2seg" in out:
        maps["depth2seg"] = out["depth2seg"][0].argmax(0).numpy()
        maps["seg2depth"] = out["seg2depth"][0, 0].numpy()
        energy = consistency_energy_maps(out)
        maps["seg_energy"], maps["depth_energy"] = (energy["seg"][0].numpy(),
                                                    energy["depth"][0].numpy())
    return {name: maps[name] for name in panel_names(run)}


def render(run: LoadedRun, split: str = "test", index: int = 0, columns: int = 4):
    """One sample of ``run`` as a plotly Figure with one subplot per :func:`panel_names`.

    Seg panels use the dataset palette (hover shows the class; the title carries the class
    legend), depth panels share one colour scale with a colour bar in the dataset's depth
    units, errors and energies have their own scales and colour bars (see :func:`units`).
    Hover shows each value with its unit.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    maps = predict(run, split, index)
    names = list(maps)
    rows = -(-len(names) // columns)
    fig = make_subplots(rows=rows, cols=columns, subplot_titles=[TITLES[n] for n in names],
                        horizontal_spacing=0.09, vertical_spacing=0.08)
    dataset = run.dataset(split)
    depth_units = dataset.depth_units
    depth_range = _range([maps[n] for n in names if PANELS[n][0] == "depth"])
    where = "(%{x}, %{y}) "
    for i, name in enumerate(names):
        kind, row, col = PANELS[name][0], i // columns + 1, i % columns + 1
        value = maps[name]
        extra = f"<extra>{TITLES[name]}</extra>"
        if kind == "rgb":
            trace = go.Image(z=value, name=name, hovertemplate=where + "rgb %{z}" + extra)
        elif kind == "seg":
            trace = go.Image(z=colorize_seg(value, run.num_classes), name=name,
                             customdata=np.asarray(dataset.class_names + ["ignore"])[value],
                             hovertemplate=where + "%{customdata}" + extra)
        else:
            zmin, zmax = depth_range if kind == "depth" else _range([value])
            unit = units(name, depth_units)
            xd, yd = _domain(fig, i + 1)
            trace = go.Heatmap(
                z=value, name=name, zmin=zmin, zmax=zmax, colorscale=_plotly_scale(CMAPS[kind]),
                hovertemplate=where + "%{z:.4g} " + unit + extra,
                colorbar=dict(title=dict(text=unit, side="right", font=dict(size=10)),
                              x=xd[1] + 0.005, xanchor="left", y=sum(yd) / 2, len=yd[1] - yd[0],
                              thickness=10, tickfont=dict(size=9)))
        fig.add_trace(trace, row=row, col=col)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False, constrain="domain")
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False, autorange="reversed",
                     constrain="domain")
    for i in range(1, len(names) + 1):  # keep pixels square
        fig.layout[f"yaxis{i if i > 1 else ''}"].scaleanchor = f"x{i if i > 1 else ''}"
    title = f"{run.label} · {split} #{index} · depth in {depth_units}"
    if any(PANELS[n][0] == "seg" for n in names):
        title += f"<br><sup>{class_legend(run, dataset)}</sup>"
    fig.update_layout(title=title, height=260 * rows + 90, width=1150,
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


def static_gallery(run: LoadedRun, split: str = "test", indices: Sequence[int] = (0, 1, 2),
                   panels: Optional[Sequence[str]] = None):
    """Several samples as one matplotlib figure (rows = samples, columns = panels): what a
    headless run (papermill, reports) keeps in place of the interactive explorer. Heat-map
    titles carry their units (:func:`units`); the class legend sits under the figure.
    ``panels``: a subset of :func:`panel_names` (e.g. :data:`PREDICTION_PANELS`), default all;
    panels the run does not have are left out."""
    from matplotlib.patches import Patch

    names = [n for n in panel_names(run) if panels is None or n in panels]
    dataset = run.dataset(split)
    aspect = run.config.data.height / run.config.data.width  # rows as tall as the images
    fig = figure((2.1 * len(names), (2.1 * aspect + 0.35) * len(indices) + 1.1))
    axes = fig.subplots(len(indices), len(names), squeeze=False)
    for r, index in enumerate(indices):
        maps = predict(run, split, index)
        depth_range = _range([maps[n] for n in names if PANELS[n][0] == "depth"])
        for ax, name in zip(axes[r], names):
            kind, value = PANELS[name][0], maps[name]
            if kind in ("rgb", "seg"):
                ax.imshow(value if kind == "rgb" else colorize_seg(value, run.num_classes))
            else:
                vmin, vmax = depth_range if kind == "depth" else _range([value])
                ax.imshow(value, vmin=vmin, vmax=vmax, cmap=CMAPS[kind])
            ax.set_axis_off()
            if r == 0:
                unit = "" if kind in ("rgb", "seg") else f"\n[{units(name, dataset.depth_units)}]"
                ax.set_title(TITLES[name] + unit, fontsize=6)
        axes[r][0].text(-0.1, 0.5, f"#{index}", transform=axes[r][0].transAxes, ha="right")
    palette = seg_palette(run.num_classes) / 255
    fig.legend(handles=[Patch(color=c, label=n) for n, c in zip(dataset.class_names, palette)],
               loc="lower center", ncol=min(len(dataset.class_names), 10), fontsize=7,
               frameon=False)
    fig.suptitle(f"{run.label} · {split} · depth in {dataset.depth_units}", fontsize=9)
    height = fig.get_figheight()  # margins in inches: the legend below, titles above
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.5 / height, top=1 - 0.6 / height,
                        wspace=0.05, hspace=0.15)
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
