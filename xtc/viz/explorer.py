"""The prediction explorer: image -> direct vs transferred predictions, errors and energy.

Three layers, so that the part that matters is testable without a browser:

* :func:`load_run` (pure): a trained run folder -> :class:`LoadedRun` (model from
  ``checkpoints/best.pt``, its config, datasets built on demand without augmentation).
* :func:`predict` / :func:`render` (pure): one sample -> numpy panels -> a plotly Figure.
  Panels: image, GT seg, direct seg, transferred seg (``depth2seg``), GT depth, direct depth,
  transferred depth (``seg2depth``), abs depth error, seg error, seg and depth consistency
  energy. Runs without transfer nets (``mtl``, ``stl-*``) omit the panels they cannot have.
* :class:`Explorer`: a thin ipywidgets UI (run dropdown, split toggle, sample slider) that
  re-renders into an ``Output``; and :func:`static_gallery` (matplotlib) for headless runs,
  where papermill keeps no widget state.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from xtc import checkpoint
from xtc.config import Config, from_dict
from xtc.data import build_dataset_from_config
from xtc.metrics import consistency_energy_maps
from xtc.models import build_model_from_config
from xtc.viz.plots import figure, colorize_seg

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


@dataclass
class LoadedRun:
    """A trained run ready to explore; datasets are built on first use per split."""

    run_dir: Path
    model: torch.nn.Module = field(repr=False)
    config: Config = field(repr=False)
    num_classes: int
    checkpoint: Path
    _datasets: dict = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def method(self) -> str:
        return self.model.method

    def dataset(self, split: str):
        """The ``split`` dataset of this run's config, never augmented."""
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is not valid; choose one of {list(SPLITS)}")
        if split not in self._datasets:
            data_cfg = dataclasses.replace(self.config.data, augment=False)
            self._datasets[split] = build_dataset_from_config(data_cfg, split)
        return self._datasets[split]


def load_run(run_dir: str | Path, which: str = "best") -> LoadedRun:
    """Load ``run_dir/checkpoints/{which}.pt`` (falls back to ``last.pt``) into a model on CPU.

    The config comes from the checkpoint itself, so the model is rebuilt exactly as trained.
    """
    run_dir = Path(run_dir)
    path = run_dir / "checkpoints" / f"{which}.pt"
    if not path.is_file() and (run_dir / "checkpoints" / "last.pt").is_file():
        path = run_dir / "checkpoints" / "last.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} holds no checkpoints/{which}.pt or last.pt; pass "
                                f"the folder a training run wrote (xtc train --out DIR)")
    payload = checkpoint.load(path)
    cfg = from_dict(payload["config"])
    cfg.train.device = "cpu"
    model = build_model_from_config(cfg, num_classes=payload["num_classes"])
    model.load_state_dict(payload["model"])
    return LoadedRun(run_dir=run_dir, model=model.eval(), config=cfg,
                     num_classes=payload["num_classes"], checkpoint=path)


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

    Seg panels use the dataset palette (hover shows the class), depth panels share one colour
    scale in the dataset's depth units, errors and energies have their own.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    maps = predict(run, split, index)
    names = list(maps)
    rows = -(-len(names) // columns)
    fig = make_subplots(rows=rows, cols=columns, subplot_titles=[TITLES[n] for n in names],
                        horizontal_spacing=0.02, vertical_spacing=0.08)
    dataset = run.dataset(split)
    depth_range = _range([maps[n] for n in names if PANELS[n][0] == "depth"])
    for i, name in enumerate(names):
        kind, row, col = PANELS[name][0], i // columns + 1, i % columns + 1
        value = maps[name]
        if kind == "rgb":
            trace = go.Image(z=value, name=name)
        elif kind == "seg":
            trace = go.Image(z=colorize_seg(value, run.num_classes), name=name,
                             customdata=np.asarray(dataset.class_names + ["ignore"])[value],
                             hovertemplate="%{customdata}<extra>" + name + "</extra>")
        else:
            zmin, zmax = depth_range if kind == "depth" else _range([value])
            trace = go.Heatmap(z=value, name=name, zmin=zmin, zmax=zmax, showscale=False,
                               colorscale={"depth": "Viridis", "error": "Inferno",
                                           "energy": "Magma"}[kind])
        fig.add_trace(trace, row=row, col=col)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False, autorange="reversed")
    for i in range(1, len(names) + 1):  # keep pixels square
        fig.layout[f"yaxis{i if i > 1 else ''}"].scaleanchor = f"x{i if i > 1 else ''}"
    fig.update_layout(title=f"{run.name} ({run.method}) · {split} #{index} · depth in "
                            f"{dataset.depth_units}", height=260 * rows + 80, width=1000,
                      margin=dict(l=10, r=10, t=80, b=10))
    return fig


def static_gallery(run: LoadedRun, split: str = "test", indices: Sequence[int] = (0, 1, 2)):
    """Several samples as one matplotlib figure (rows = samples, columns = panels): what a
    headless run (papermill, reports) keeps in place of the interactive explorer."""
    names = panel_names(run)
    dataset = run.dataset(split)
    fig = figure((1.9 * len(names), 1.9 * len(indices) + 0.4))
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
                ax.imshow(value, vmin=vmin, vmax=vmax, cmap={"depth": "viridis", "error": "inferno",
                                                             "energy": "magma"}[kind])
            ax.set_axis_off()
            if r == 0:
                ax.set_title(TITLES[name], fontsize=7)
        axes[r][0].text(-0.1, 0.5, f"#{index}", transform=axes[r][0].transAxes, ha="right")
    fig.suptitle(f"{run.name} ({run.method}) · {split} · depth in {dataset.depth_units}",
                 fontsize=9)
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.01, top=0.86, wspace=0.05, hspace=0.1)
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
        runs = list(dict.fromkeys(str(Path(r).resolve()) for r in runs))  # first one is shown
        if not runs:
            raise ValueError("Explorer needs at least one run folder (see xtc.viz.find_runs)")
        self._cache: dict[str, LoadedRun] = {}
        self.run_select = w.Dropdown(options=[(f"{Path(r).parent.name}/{Path(r).name}", r)
                                              for r in runs], description="run")
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
        self.status.value = (f"<b>{self.run.name}</b> · {self.run.method} · "
                             f"{self.split.value} #{self.index.value}")
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
