"""Loss landscapes of the multi-term xtc objective (docs/method.md §4).

Pure computation (torch + numpy, no plotting; figures live in ``xtc.viz.landscape_plots``):

* :func:`filter_normalized_direction` -- a random direction scaled filter by filter to the
  weights (Li, Xu, Taylor, Studer, Goldstein, "Visualizing the Loss Landscape of Neural
  Nets", NeurIPS 2018; tomgoldstein/loss-landscape ``--xnorm filter --xignore biasbn``).
* :func:`interpolate` -- 1-D losses along theta_a -> theta_b (two checkpoints) or along a direction.
* :func:`surface` -- 2-D losses on the plane theta + x d_x + y d_y.
* :func:`sharpness` -- a few numbers per term: max loss increase within a radius, curvature.

Every point evaluates *each loss term separately* (whatever the criterion returns: a direct
term ``<task>`` per task, a cross-task term ``<a>2<b>`` per edge of the transfer graph, and
``total``; two tasks: ``seg``, ``depth``, ``seg2depth``, ``depth2seg``, ``total``; three tasks
add ``normal`` and four more edges), from one forward pass per batch, averaged over the given
batches. :func:`loss_terms` names them for a config without evaluating anything.

Batch-norm statistics are handled explicitly (``bn=``):

* ``"eval"`` (default, fast): the model runs in eval mode with the checkpoint's running
  statistics at every point. Between two checkpoints the float buffers (running mean/var)
  are interpolated with the weights, so both endpoints are exactly the checkpoints.
* ``"recompute"``: at every point the running statistics are reset and re-estimated from the
  given batches (train-mode forwards with ``momentum=None``, i.e. a cumulative average), then
  the losses are evaluated in eval mode. Slower (two passes), but the statistics match the
  perturbed weights.

The model's parameters, buffers, train/eval mode and BN momenta are restored exactly
afterwards (bit for bit), also when an exception interrupts the sweep.

Examples:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    >>> d = filter_normalized_direction(net, seed=0)
    >>> bool(torch.allclose(d["0.weight"].flatten(1).norm(dim=1),
    ...                     net[0].weight.flatten(1).norm(dim=1)))
    True
    >>> float(d["1.weight"].abs().sum()), float(d["0.bias"].abs().sum())  # BN and bias: ignored
    (0.0, 0.0)
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

__all__ = ["Curve", "Surface", "filter_normalized_direction", "grid_coordinates",
           "interpolate", "surface", "sharpness", "landscape_criterion", "loss_terms",
           "term_order",
           "sample_batches", "BN_MODES"]

BN_MODES = ("eval", "recompute")
Direction = dict  # parameter name -> tensor shaped like the parameter


class _Landscape:
    """Shared by :class:`Curve` and :class:`Surface`: ``losses[term]`` arrays, ``bn`` mode."""

    losses: dict
    bn: str

    def __getitem__(self, term: str) -> np.ndarray:
        return self.losses[term]

    @property
    def terms(self) -> list:
        return list(self.losses)

    def _losses_dict(self) -> dict:
        return {"bn": self.bn, "losses": {k: v.tolist() for k, v in self.losses.items()}}


@dataclass
class Curve(_Landscape):
    """1-D landscape: ``losses[term][i]`` is the mean loss at ``alpha[i]``."""

    alpha: np.ndarray
    losses: dict = field(default_factory=dict)
    bn: str = "eval"

    def to_dict(self) -> dict:
        return {"alpha": self.alpha.tolist(), **self._losses_dict()}


@dataclass
class Surface(_Landscape):
    """2-D landscape: ``losses[term][i, j]`` is the mean loss at ``(x[j], y[i])`` (shape
    ``(len(y), len(x))``, the convention of ``matplotlib.contour`` and ``plotly go.Surface``)."""

    x: np.ndarray
    y: np.ndarray
    losses: dict = field(default_factory=dict)
    bn: str = "eval"

    def to_dict(self) -> dict:
        return {"x": self.x.tolist(), "y": self.y.tolist(), **self._losses_dict()}


# ----------------------------------------------------------------------------- directions
def filter_normalized_direction(model: nn.Module, seed: int = 0) -> Direction:
    """A Gaussian direction, one tensor per parameter, filter-normalised (Li et al. 2018).

    For a weight of shape (C_out, ...) each filter ``d[i]`` is rescaled to ``||w[i]||``
    (Frobenius norm of the matching filter of the weights), so a step of 1 along the direction
    changes every filter by its own scale and the plot is comparable across layers and
    networks. Biases and BatchNorm affine parameters (every parameter with ``dim() <= 1``) get
    a **zero** direction: the "ignore biasbn" choice of tomgoldstein/loss-landscape, because a
    1-D vector has no filters to normalise and perturbing BN scales changes the function's
    scale rather than its shape. Buffers (BN running statistics) are not part of a direction;
    see ``bn=`` of :func:`surface`.

    Args:
        model: any module; only parameters with ``requires_grad`` get a non-zero direction.
        seed: the direction is a function of (seed, parameter order, shapes) only.

    Returns:
        ``{parameter name: tensor}`` with the parameters' shapes, dtypes and devices.
    """
    generator = torch.Generator().manual_seed(int(seed))
    direction: Direction = {}
    for name, p in model.named_parameters():
        w = p.detach()
        d = torch.randn(w.shape, generator=generator)  # drawn for every parameter, so the
        if w.dim() <= 1 or not p.requires_grad:  # stream never shifts with the ignore rule
            d.zero_()
        else:
            d_norm = d.flatten(1).norm(dim=1).clamp_min(1e-10)
            d *= (w.float().cpu().flatten(1).norm(dim=1) / d_norm).view(-1, *([1] * (w.dim() - 1)))
        direction[name] = d.to(dtype=w.dtype, device=w.device)
    return direction


def grid_coordinates(grid: Union[int, Sequence[float]], span: float = 1.0) -> np.ndarray:
    """``grid`` points from -span to span (an odd count puts an exact 0 in the middle), or
    the given coordinates unchanged."""
    if isinstance(grid, (int, np.integer)):
        if grid < 2:
            raise ValueError(f"grid={grid}: need at least 2 points per axis (odd, e.g. 5)")
        half = (grid - 1) / 2
        return span * (np.arange(grid) - half) / half
    return np.asarray(grid, dtype=float)


# ----------------------------------------------------------------------------- sweeps
def interpolate(model_a: nn.Module, target: Union[nn.Module, Mapping[str, torch.Tensor]],
                batches: Sequence[dict], criterion: Callable,
                alphas: Union[int, Sequence[float]] = 9, bn: str = "eval") -> Curve:
    """Losses along a line: theta(alpha) = (1-alpha) theta_a + alpha theta_b for a second model
    ``target`` (same architecture), or theta_a + alpha d for a direction ``target``.

    With two models and ``bn="eval"`` the float buffers are interpolated too, so
    ``alpha=0`` and ``alpha=1`` give exactly each model's own eval losses. An int ``alphas``
    means that many points from -0.5 to 1.5 for two models (0 and 1 always included), and
    from -1 to 1 for a direction (odd counts include 0). ``model_a`` is restored exactly afterwards.
    """
    _check_bn(bn)
    params = _named_params(model_a)
    if isinstance(target, nn.Module):
        other = dict(target.named_parameters())
        if set(other) != set(params) or any(other[k].shape != params[k].shape for k in params):
            raise ValueError("interpolate: the two models have different parameters; both "
                             "checkpoints must come from the same architecture (same "
                             "model.method, encoder and widths)")
        end = {k: v.detach().to(params[k].device) for k, v in other.items()}
        end_buffers = {k: v.detach() for k, v in target.named_buffers()}
        coords = np.asarray(alphas, dtype=float) if not isinstance(alphas, int) else \
            np.unique(np.concatenate([np.linspace(-0.5, 1.5, alphas).round(12), [0.0, 1.0]]))
    else:
        end, end_buffers = None, None
        coords = grid_coordinates(alphas, 1.0)
    out: dict[str, list] = {}
    with preserved(model_a) as base:
        for a in coords:
            with torch.no_grad():
                for name, p in params.items():
                    if end is not None:  # exact at a = 0 and a = 1
                        p.copy_((1 - float(a)) * base[name] + float(a) * end[name])
                    else:
                        p.copy_(base[name] + float(a) * target[name])
                if end_buffers is not None and bn == "eval":
                    for name, b in model_a.named_buffers():
                        if b.is_floating_point() and name in end_buffers and name in base:
                            b.copy_((1 - float(a)) * base[name] + float(a) * end_buffers[name])
            _append(out, _point_losses(model_a, batches, criterion, bn))
    return Curve(np.asarray(coords, dtype=float), {k: np.asarray(v) for k, v in out.items()}, bn)


def surface(model: nn.Module, dir_x: Mapping[str, torch.Tensor], dir_y: Mapping[str, torch.Tensor],
            batches: Sequence[dict], criterion: Callable, grid: Union[int, Sequence[float]] = 5,
            span: float = 1.0, bn: str = "eval", progress: bool = False) -> Surface:
    """Losses of every term on theta + x d_x + y d_y for x, y on ``grid`` (int: points per
    axis from -span to span; or explicit coordinates). ``model`` is restored exactly.

    Cost: ``len(x) * len(y) * len(batches)`` forwards (twice that with ``bn="recompute"``).
    """
    _check_bn(bn)
    xs, ys = grid_coordinates(grid, span), grid_coordinates(grid, span)
    params = _named_params(model)
    out: dict[str, np.ndarray] = {}
    points = [(i, j) for i in range(len(ys)) for j in range(len(xs))]
    if progress:
        from tqdm.auto import tqdm
        points = tqdm(points, desc="surface", leave=False)
    with preserved(model) as base:
        for i, j in points:
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(base[name] + float(xs[j]) * dir_x[name] + float(ys[i]) * dir_y[name])
            for term, value in _point_losses(model, batches, criterion, bn).items():
                out.setdefault(term, np.full((len(ys), len(xs)), np.nan))[i, j] = value
    return Surface(xs, ys, out, bn)


# ----------------------------------------------------------------------------- sharpness
def sharpness(landscape: Union[Curve, Surface], radius: Optional[float] = None,
              centre: float = 0.0) -> dict[str, dict[str, float]]:
    """Sharpness numbers per term, around the centre (0 or 0,0; ``centre`` picks the alpha
    of a :class:`Curve`, e.g. 1.0 for the second checkpoint).

    * ``centre``: the loss at the centre point (nearest grid point).
    * ``max_increase``: max(L - L_centre) over the points within ``radius`` (default: all).
    * ``curvature_x`` / ``curvature_y`` (surfaces) or ``curvature`` (curves): 2a of a
      least-squares fit L ~ a t^2 + b t + c along each axis through the centre, on the points
      within ``radius``; units: loss per (step along the filter-normalised direction)^2.
      ``mean_curvature`` is the mean of the two axes. NaN with fewer than 3 points.
    """
    result: dict[str, dict[str, float]] = {}
    if isinstance(landscape, Surface):
        xs, ys = landscape.x, landscape.y
        j0, i0 = int(np.argmin(np.abs(xs))), int(np.argmin(np.abs(ys)))
        rx, ry = xs - xs[j0], ys - ys[i0]
        dist = np.hypot(rx[None, :], ry[:, None])
        inside = dist <= (np.inf if radius is None else radius + 1e-12)
        for term, z in landscape.losses.items():
            c = float(z[i0, j0])
            cx = _curvature(rx, z[i0, :], radius)
            cy = _curvature(ry, z[:, j0], radius)
            result[term] = {"centre": c, "max_increase": float(np.nanmax(z[inside]) - c),
                            "curvature_x": cx, "curvature_y": cy,
                            "mean_curvature": 0.5 * (cx + cy)}
        return result
    t = landscape.alpha - landscape.alpha[int(np.argmin(np.abs(landscape.alpha - centre)))]
    inside = np.abs(t) <= (np.inf if radius is None else radius + 1e-12)
    for term, z in landscape.losses.items():
        c = float(z[int(np.argmin(np.abs(t)))])
        result[term] = {"centre": c, "max_increase": float(np.nanmax(z[inside]) - c),
                        "curvature": _curvature(t, z, radius)}
    return result


def _curvature(t: np.ndarray, z: np.ndarray, radius: Optional[float]) -> float:
    keep = np.isfinite(z) & (np.abs(t) <= (np.inf if radius is None else radius + 1e-12))
    if keep.sum() < 3:
        return float("nan")
    return float(2 * np.polyfit(t[keep], z[keep], 2)[0])


# ---------------------------------------------------------------------- helpers for notebooks
def landscape_criterion(cfg: Any):
    """The criterion of ``cfg`` with ``loss.weighting=fixed``: ``total`` = L_S + L_D, free of
    learnt weighting parameters, so totals are comparable between runs and checkpoints."""
    import copy

    from xtc.losses import build_criterion

    cfg = copy.deepcopy(cfg)
    cfg.loss.weighting = "fixed"
    return build_criterion(cfg).eval()


def loss_terms(cfg: Any) -> list[str]:
    """The terms a landscape of ``cfg`` evaluates, in plotting order: every task of the
    method, every edge (``xtc``), ``total``.

    >>> import xtc.config
    >>> loss_terms(xtc.config.load(None, ["model.tasks=[seg,depth,normal]"]))[3:]
    ['seg2depth', 'seg2normal', 'depth2seg', 'depth2normal', 'normal2seg', 'normal2depth', 'total']
    """
    from xtc.tasks import METHODS, transfers_of

    tasks = METHODS.get(cfg.model.method).tasks_for(cfg.model.tasks)
    return term_order([*tasks, *transfers_of(cfg), "total"])


def term_order(terms) -> list[str]:
    """Loss terms in reading order, for any task set: the direct terms in registry order
    (seg, depth, normal, ...), then the edges ``<a>2<b>`` by source then target task, then
    ``total``, then anything else sorted. Two tasks: :data:`TERM_ORDER`.

    >>> term_order(["total", "normal2seg", "seg2normal", "depth", "seg", "normal"])
    ['seg', 'depth', 'normal', 'seg2normal', 'normal2seg', 'total']
    """
    from xtc.tasks import TASKS, split_edge

    order = TASKS.in_order()
    terms = list(dict.fromkeys(terms))
    direct = [t for t in order if t in terms]
    edges = []
    for t in terms:
        try:
            a, b = split_edge(t)
        except ValueError:
            continue
        if a in order and b in order:
            edges.append(t)
    edges.sort(key=lambda e: tuple(order.index(x) for x in split_edge(e)))
    known = [*direct, *edges, *(["total"] if "total" in terms else [])]
    return known + sorted(set(terms) - set(known))


def sample_batches(cfg: Any, split: str = "val", n_batches: int = 2,
                   batch_size: Optional[int] = None) -> list[dict]:
    """The first ``n_batches`` batches of ``split`` (no shuffling, no augmentation): fixed data
    so every landscape point sees the same images. Items hold the batch keys of the
    method's tasks (``model.tasks``: a three-task config's batches carry normals)."""
    from torch.utils.data import DataLoader

    from xtc.data import build_dataset_from_config
    from xtc.tasks import METHODS

    tasks = METHODS.get(cfg.model.method).tasks_for(cfg.model.tasks)
    dataset = build_dataset_from_config(dataclasses.replace(cfg.data, augment=False), split,
                                        tasks=tasks)
    loader = DataLoader(dataset, batch_size=batch_size or cfg.train.batch_size, shuffle=False)
    batches = []
    for batch in loader:
        if len(batches) >= n_batches:
            break
        batches.append(batch)
    return batches


@contextlib.contextmanager
def preserved(model: nn.Module):
    """Yield a copy of ``model.state_dict()`` (name -> tensor) and restore parameters,
    buffers, train/eval mode and BN momenta exactly on exit."""
    saved = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in model.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    try:
        yield saved
    finally:
        with torch.no_grad():
            model.load_state_dict(saved)
        for m, mode in modes.items():
            m.training = mode
        for m, momentum in momenta.items():
            m.momentum = momentum


def _named_params(model: nn.Module) -> dict[str, torch.Tensor]:
    return dict(model.named_parameters())


def _check_bn(bn: str) -> None:
    if bn not in BN_MODES:
        raise ValueError(f"bn={bn!r}: choose 'eval' (checkpoint running statistics) or "
                         f"'recompute' (re-estimate them at every point)")


def _append(out: dict, values: dict) -> None:
    for k, v in values.items():
        out.setdefault(k, []).append(v)


@torch.no_grad()
def _point_losses(model: nn.Module, batches: Iterable[dict], criterion: Callable,
                  bn: str) -> dict[str, float]:
    """Mean of every criterion term over ``batches`` at the model's current weights."""
    device = next(model.parameters()).device
    batches = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()}
               for b in batches]
    if bn == "recompute":
        norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average over the given batches
        model.train()
        for b in batches:
            model(b["image"])
    model.eval()
    sums: dict[str, float] = {}
    for b in batches:
        for term, value in criterion(model(b["image"]), b).items():
            sums[term] = sums.get(term, 0.0) + float(value)
    return {k: v / max(len(batches), 1) for k, v in sums.items()}
