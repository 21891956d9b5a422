"""Gradient aggregation (Jacobian descent) over task and cross-task objectives, with TorchJD.

``loss.aggregator=none`` (the default) is today's step: one backward of the scalarised total.
Any other name is a TorchJD aggregator (:data:`AGGREGATORS`) that turns the Jacobian of K
objectives on the shared encoder into one update direction. ``loss.objectives`` says what
the K objectives are:

* ``tasks``: one per task group, L_a = (1 - lambda_a) L_a + lambda_a mean_b L_a2b (the
  standard multi-task setting; the cross-task share is still fixed by lambda_a);
* ``terms``: every direct term L_a and every cross-task term L_a2b on its own, lambda not
  applied: the aggregator, not a fixed lambda, resolves how a cross-task term conflicts
  with the direct ones (the experiment the paper invites).

The aggregator replaces the loss weighting (``loss.weighting`` is set to ``fixed``).

**Where the Jacobian is taken.** On the shared encoder's *parameters*, by TorchJD's
``autojac.jac`` (one backward per objective through the whole network), then aggregated by
the TorchJD aggregator. Parameter space, not the features (LibMTL's ``rep_grad``), because
that is where the update lives: UPGrad's "conflicts with no objective" and MGDA's
Pareto-stationarity hold for the applied step only there. TorchJD's ``mtl_backward`` (the
Jacobian through the features) does not fit this model: it assumes one last shared
representation, while the decoders read all five encoder levels (skip connections), and
its chain rule through nested features counts the deeper paths twice (the early layers'
rows came out 5-50% off; tests/test_aggregation.py checks the Jacobian against plain
autograd). Decoders and transfer nets are task-specific: they get the sum of their
objectives' gradients, as in plain gradient descent.

**Two engines** (``loss.aggregator_engine``). ``autojac`` (the default) holds the K x P
Jacobian and hands it to the aggregator. ``autogram`` (TorchJD's Gramian engine on the
encoder, ``batch_dim=None`` because of its BatchNorm) computes only the K x K Gramian J J^T,
takes the aggregator's weights w from it and backpropagates w, so the encoder gets J^T w: the
same step (tested) for the aggregators that are functions of the Gramian
(:func:`gramian_based`: UPGrad, MGDA, PCGrad, CAGrad, IMTL-G, Aligned-MTL, DualProj,
FairGrad), without the Jacobian in memory. Measured for UPGrad on a 2-core CPU
(bench/RESULTS.md section 14): 15-17% less step memory from K = 4, but 1.09-1.39x the
autojac step time at K = 2-8 (the decoders need one more backward for their summed
gradients), so it is the option for a Jacobian that does not fit, not the default. It runs in
fp32 in one process only: TorchJD 0.18's Gramian engine fails under bf16 autocast, and under
DDP the ranks' Jacobian rows must be averaged before aggregation, while the Gramian of
averaged rows is not the average of the ranks' Gramians; asked for there, it is refused with
the reason.

**Distributed.** Every rank's Jacobian is averaged over the ranks *before* aggregation, so
N processes aggregate the global batch's Jacobian and make the same update as one process
(tested with two gloo processes). Random aggregators (``graddrop``) draw from a generator
seeded per step, so ranks agree and a resumed run draws what an uninterrupted one did.

Examples:
    >>> import torch
    >>> J = torch.tensor([[1.0, 0.0], [-0.5, 1.0]])
    >>> d = build_aggregator("upgrad", 2)(J)
    >>> bool((J @ d >= -1e-6).all())  # UPGrad's direction conflicts with no objective
    True
    >>> AGGREGATORS.names()[:4]
    ['aligned_mtl', 'cagrad', 'config', 'dualproj']
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager, nullcontext
from typing import Any, Optional, Sequence

import torch
from torch import nn

from xtc.errors import ConfigError
from xtc.registry import Registry

AGGREGATORS = Registry("aggregator")
OBJECTIVES = ("tasks", "terms")  # loss.objectives
ENGINES = ("autojac", "autogram")  # loss.aggregator_engine
NONE = "none"  # loss.aggregator: the scalarised loss, no Jacobian
COND_CAP = 1e12  # gstat_gramian_cond of a singular Gramian
JACOBIANS = {  # what results.json says the Jacobian was, per engine
    "autojac": "shared encoder parameters (torchjd.autojac.jac, one backward per objective)",
    "autogram": "shared encoder parameters, as its Gramian (torchjd.autogram.Engine on the "
                "encoder, batch_dim=None; the aggregator's weights from the Gramian)",
}


def _tensor(value):
    return None if value is None else torch.as_tensor(value, dtype=torch.float32)


# Each builder takes the number of objectives first, then TorchJD's own constructor
# arguments (the defaults are TorchJD's, except where a paper's value is needed).
@AGGREGATORS.register("upgrad")
def _upgrad(n: int, pref_vector=None):
    from torchjd.aggregation import UPGrad
    return UPGrad(pref_vector=_tensor(pref_vector))


@AGGREGATORS.register("dualproj")
def _dualproj(n: int, pref_vector=None):
    from torchjd.aggregation import DualProj
    return DualProj(pref_vector=_tensor(pref_vector))


@AGGREGATORS.register("mgda")
def _mgda(n: int, epsilon: float = 0.001, max_iters: int = 100):
    from torchjd.aggregation import MGDA
    return MGDA(epsilon=epsilon, max_iters=max_iters)


@AGGREGATORS.register("pcgrad")
def _pcgrad(n: int):
    from torchjd.aggregation import PCGrad
    return PCGrad()


@AGGREGATORS.register("cagrad")
def _cagrad(n: int, c: float = 0.4, norm_eps: float = 0.0001):
    """c = 0.4: the CAGrad paper's (and LibMTL's) value for NYUv2 and Cityscapes."""
    from torchjd.aggregation import CAGrad
    return CAGrad(c=c, norm_eps=norm_eps)


@AGGREGATORS.register("imtl_g")
def _imtl_g(n: int):
    from torchjd.aggregation import IMTLG
    return IMTLG()


@AGGREGATORS.register("nash_mtl")
def _nash_mtl(n: int, max_norm: float = 1.0, update_weights_every: int = 1,
              optim_niter: int = 20):
    from torchjd.aggregation import NashMTL
    return NashMTL(n_tasks=n, max_norm=max_norm, update_weights_every=update_weights_every,
                   optim_niter=optim_niter)


@AGGREGATORS.register("aligned_mtl")
def _aligned_mtl(n: int, pref_vector=None, scale_mode: str = "min"):
    from torchjd.aggregation import AlignedMTL
    return AlignedMTL(pref_vector=_tensor(pref_vector), scale_mode=scale_mode)


@AGGREGATORS.register("graddrop")
def _graddrop(n: int, leak=None):
    from torchjd.aggregation import GradDrop
    return GradDrop(leak=_tensor(leak))


@AGGREGATORS.register("fairgrad")
def _fairgrad(n: int, alpha: float = 1.0, max_iters: Optional[int] = None):
    """alpha = 1: proportional fairness, the FairGrad paper's middle setting."""
    from torchjd.aggregation import FairGrad
    return FairGrad(alpha=alpha, max_iters=max_iters)


@AGGREGATORS.register("config")
def _config(n: int, pref_vector=None):
    from torchjd.aggregation import ConFIG
    return ConFIG(pref_vector=_tensor(pref_vector))


@AGGREGATORS.register("mean")
def _mean(n: int):
    from torchjd.aggregation import Mean
    return Mean()


@AGGREGATORS.register("sum")
def _sum(n: int):
    from torchjd.aggregation import Sum
    return Sum()


def aggregator_arguments(name: str) -> dict[str, Any]:
    """The arguments ``loss.aggregator_args`` may set for ``name``, with their defaults."""
    params = list(inspect.signature(AGGREGATORS.get(name)).parameters.values())[1:]
    return {p.name: p.default for p in params}


def check_arguments(name: str, args: dict) -> None:
    """Raise ValueError naming the unknown keys of ``args`` and the valid ones."""
    valid = aggregator_arguments(name)
    unknown = sorted(set(args) - set(valid))
    if unknown:
        raise ConfigError(f"loss.aggregator_args: {name} takes {sorted(valid) or 'no arguments'}; "
                          f"got {unknown}")


def build_aggregator(name: str, n_objectives: int, args: Optional[dict] = None):
    """The TorchJD aggregator registered as ``name`` for ``n_objectives`` objectives."""
    args = dict(args or {})
    check_arguments(name, args)
    return AGGREGATORS.get(name)(n_objectives, **args)


def gramian_based(name: str) -> bool:
    """Whether aggregator ``name`` is a function of the Gramian J J^T (TorchJD's
    ``GramianWeightedAggregator``), so the Gramian engine can run it."""
    from torchjd.aggregation._aggregator_bases import GramianWeightedAggregator

    return isinstance(build_aggregator(name, 2), GramianWeightedAggregator)


def check_engine(engine: str, name: str, precision: str, distributed: bool) -> str:
    """``engine`` if it can run aggregator ``name`` here, else ConfigError with the reason.

    ``precision`` is the resolved one (``fp32`` | ``bf16``); ``distributed``: under torchrun.

    Examples:
        >>> check_engine("autogram", "upgrad", "fp32", distributed=False)
        'autogram'
        >>> check_engine("autogram", "upgrad", "bf16", distributed=False)
        Traceback (most recent call last):
        ...
        xtc.errors.ConfigError: loss.aggregator_engine=autogram cannot run here: TorchJD 0.18's \
Gramian engine fails under bf16 autocast (set train.precision=fp32); use \
loss.aggregator_engine=autojac
    """
    if engine not in ENGINES:
        raise ConfigError(f"loss.aggregator_engine={engine!r}; choose one of {list(ENGINES)}")
    if engine == "autojac":
        return engine
    reasons = []
    if not gramian_based(name):
        gramians = [n for n in AGGREGATORS.names() if gramian_based(n)]
        reasons.append(f"{name} is not a function of the Gramian (those are {gramians})")
    if precision == "bf16":
        reasons.append("TorchJD 0.18's Gramian engine fails under bf16 autocast (set "
                       "train.precision=fp32)")
    if distributed:
        reasons.append("under torchrun the ranks' Jacobian rows are averaged before "
                       "aggregation, and a Gramian cannot be averaged that way")
    if reasons:
        raise ConfigError(f"loss.aggregator_engine=autogram cannot run here: "
                          f"{'; '.join(reasons)}; use loss.aggregator_engine=autojac")
    return engine


class Aggregation(nn.Module):
    """One Jacobian-descent step's backward over the objectives ``names``.

    :meth:`backward` leaves in ``.grad`` the aggregated direction on ``shared`` and the
    summed objective gradients on every other parameter, ready for ``optimizer.step()``.
    Stateful aggregators (Nash-MTL) keep their state in the criterion's ``state_dict``
    (``get_extra_state``), so a resumed run continues exactly.
    """

    def __init__(self, name: str, names: Sequence[str], args: Optional[dict] = None,
                 mode: str = "tasks"):
        super().__init__()
        if mode not in OBJECTIVES:
            raise ConfigError(f"loss.objectives={mode!r}; choose one of {list(OBJECTIVES)}")
        self.name, self.mode, self.args = name, mode, dict(args or {})
        self.names = tuple(names)
        self.aggregator = build_aggregator(name, len(self.names), self.args)
        self.engine = "autojac"  # set by use_engine (build_experiment: check_engine)
        self._gramian_engine = None  # torchjd.autogram.Engine on the encoder (autogram)
        self._encoder: Optional[nn.Module] = None
        self._shared: tuple = ()  # the encoder's parameters (attach)
        self._others: tuple = ()  # every other trainable parameter of the model

    def attach(self, model: nn.Module) -> None:
        """Split ``model``'s parameters into shared (``model.encoder``) and task-specific."""
        self._encoder = model.encoder
        self._shared = tuple(p for p in model.encoder.parameters() if p.requires_grad)
        encoder_ids = {id(p) for p in model.encoder.parameters()}
        self._others = tuple(p for p in model.parameters()
                             if p.requires_grad and id(p) not in encoder_ids)

    def use_engine(self, engine: str) -> None:
        """Run the steps with ``engine`` (``autojac`` | ``autogram``, checked by
        :func:`check_engine`). The Gramian engine hooks the encoder's modules; those hooks
        only act on forward passes that record gradients."""
        if engine not in ENGINES:
            raise ConfigError(f"engine {engine!r}; choose one of {list(ENGINES)}")
        self.engine = engine
        self._gramian_engine = None
        if engine == "autogram":
            if self._encoder is None:
                raise RuntimeError("Aggregation.use_engine('autogram') before attach(model)")
            from torchjd.autogram import Engine

            self._gramian_engine = Engine(self._encoder, batch_dim=None)

    def backward(self, objectives: dict[str, torch.Tensor], ctx=None, seed: Optional[int] = None,
                 statistics: bool = False) -> Optional[dict[str, float]]:
        """Fill ``.grad``; with ``statistics``, return :func:`gradient_statistics`.

        ``ctx``: the distributed context (Jacobians and task gradients are averaged over its
        ranks); ``seed``: seeds the aggregator's random draws for this step.
        """
        from torchjd.autojac import jac

        shared, others = self._shared, self._others
        if not shared:
            raise RuntimeError("loss.aggregator: the criterion was built without the model; "
                               "use build_criterion(config, model)")
        losses = [objectives[n] for n in self.names]
        if self._gramian_engine is not None:
            return self._backward_gramian(losses, seed, statistics)
        # parallel_chunk_size=1: one objective at a time (vmap over the rows was no faster
        # here, bench/aggregators.py), and SyncBatchNorm's collectives then run in the same
        # order on every rank
        rows = jac(losses, [*shared, *others], parallel_chunk_size=1)
        jacobian = torch.cat([r.flatten(1) for r in rows[:len(shared)]], dim=1)
        for p, r in zip(others, rows[len(shared):]):
            p.grad = r.sum(0)
        if ctx is not None and ctx.active:
            import torch.distributed as dist

            from xtc import distributed

            dist.all_reduce(jacobian)
            jacobian /= ctx.world
            distributed.average_gradients(ctx, others)
        with _seeded(seed, jacobian.device) if seed is not None else nullcontext():
            direction = self.aggregator(jacobian)
        offset = 0
        for p in shared:
            n = p.numel()
            p.grad = direction[offset:offset + n].view_as(p).to(p.dtype)
            offset += n
        if not statistics:
            return None
        return gradient_statistics(jacobian.float(), direction.float(), self.names)

    def _backward_gramian(self, losses: list, seed: Optional[int],
                          statistics: bool) -> Optional[dict[str, float]]:
        """The ``autogram`` step: the Gramian G of the encoder Jacobian, the aggregator's
        weights w = weighting(G), then J^T w on the encoder and the summed objective
        gradients on every other parameter (as the ``autojac`` step leaves them)."""
        stacked = torch.stack(losses)
        gramian = self._gramian_engine.compute_gramian(stacked)
        with _seeded(seed, gramian.device) if seed is not None else nullcontext():
            weights = self.aggregator.gramian_weighting(gramian)
        others = list(self._others)
        grads = torch.autograd.grad(stacked.sum(), others, retain_graph=True,
                                    allow_unused=True)
        for p, g in zip(others, grads):  # zeros where unused, as autojac.jac gives
            p.grad = g if g is not None else torch.zeros_like(p)
        shared = list(self._shared)
        for p in shared:
            p.grad = None
        torch.autograd.backward(stacked, grad_tensors=weights.detach().to(stacked.dtype),
                                inputs=shared)
        if not statistics:
            return None
        return gramian_statistics(gramian.double(), weights.double(), self.names)

    def discard_step(self) -> None:
        """Forget a forward pass that gets no backward (a step skipped by
        ``train.nonfinite=skip``): the Gramian engine would otherwise count it against the
        next step. TorchJD 0.18 (pinned) resets these three parts after each Gramian."""
        engine = self._gramian_engine
        if engine is None:
            return
        engine._gramian_accumulator.reset()
        engine._target_edges.reset()
        for computer in engine._gramian_computers.values():
            computer.reset()

    def get_extra_state(self) -> dict:
        return _aggregator_state(self.aggregator)

    def set_extra_state(self, state: dict) -> None:
        _load_aggregator_state(self.aggregator, state)


@contextmanager
def _seeded(seed: int, device: torch.device):
    """A forked RNG (CPU and this CUDA device) seeded with ``seed``: random aggregators
    draw the same masks on every rank, and after a resume."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def objective_jacobian(objectives: Sequence[torch.Tensor], shared: Sequence[torch.Tensor],
                       ctx=None) -> torch.Tensor:
    """(K, P) Jacobian of ``objectives`` on ``shared`` (graph kept for the step's backward),
    averaged over the ranks of ``ctx``: the statistics of a run without an aggregator."""
    from torchjd.autojac import jac

    rows = jac(list(objectives), list(shared), retain_graph=True, parallel_chunk_size=1)
    matrix = torch.cat([r.flatten(1) for r in rows], dim=1).float()
    if ctx is not None and ctx.active:
        import torch.distributed as dist

        dist.all_reduce(matrix)
        matrix /= ctx.world
    return matrix


def gradient_statistics(jacobian: torch.Tensor, direction: torch.Tensor,
                        names: Sequence[str]) -> dict[str, float]:
    """Statistics of the objectives' gradients ``jacobian`` (K, P) and the applied
    ``direction`` (P,), in float64:

    * ``gstat_norm_<k>``: ||g_k||;
    * ``gstat_cos_<a>_vs_<b>``: cos(g_a, g_b) for every pair;
    * ``gstat_conflict_fraction``: the share of pairs with a negative cosine;
    * ``gstat_gramian_cond``: lambda_max / lambda_min of J J^T (capped at 1e12 when singular);
    * ``gstat_dircos_<k>``: cos(direction, g_k) (negative: the step increases objective k).

    Examples:
        >>> J = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
        >>> s = gradient_statistics(J, J.sum(0), ["seg", "depth"])
        >>> round(s["gstat_cos_seg_vs_depth"], 4), s["gstat_conflict_fraction"]
        (-0.7071, 1.0)
    """
    J, d = jacobian.double(), direction.double()
    return _statistics(J @ J.T, J @ d, d.norm(), names)


def gramian_statistics(gramian: torch.Tensor, weights: torch.Tensor,
                       names: Sequence[str]) -> dict[str, float]:
    """:func:`gradient_statistics` of the step d = J^T w from the Gramian G = J J^T and the
    weights w alone (the ``autogram`` engine holds no Jacobian): J d = G w, ||d||^2 = w^T G w.

    Examples:
        >>> J = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
        >>> w = torch.tensor([1.0, 1.0], dtype=torch.float64)
        >>> a = gramian_statistics(J @ J.T, w, ["seg", "depth"])
        >>> b = gradient_statistics(J, J.T @ w, ["seg", "depth"])
        >>> all(abs(a[k] - b[k]) < 1e-12 for k in b)
        True
    """
    G, w = gramian.double(), weights.double()
    projections = G @ w
    return _statistics(G, projections, (w @ projections).clamp_min(0).sqrt(), names)


def _statistics(gram: torch.Tensor, projections: torch.Tensor, d_norm: torch.Tensor,
                names: Sequence[str]) -> dict[str, float]:
    """The statistics from the Gramian, J d and ||d|| (float64)."""
    norms = gram.diagonal().clamp_min(0).sqrt()
    out = {f"gstat_norm_{n}": float(v) for n, v in zip(names, norms)}
    pairs, conflicts = 0, 0
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            cos = float(gram[i, j] / (norms[i] * norms[j]).clamp_min(1e-30))
            out[f"gstat_cos_{names[i]}_vs_{names[j]}"] = cos
            pairs += 1
            conflicts += cos < 0
    out["gstat_conflict_fraction"] = conflicts / pairs if pairs else 0.0
    eig = torch.linalg.eigvalsh(gram)
    top = float(eig[-1])
    out["gstat_gramian_cond"] = (min(top / float(eig[0]), COND_CAP) if float(eig[0]) > 0
                                 else COND_CAP) if top > 0 else COND_CAP
    d_norm = d_norm.clamp_min(1e-30)
    for n, dot, g in zip(names, projections, norms):
        out[f"gstat_dircos_{n}"] = float(dot / (d_norm * g.clamp_min(1e-30)))
    return out


# ------------------------------------------------------------------ aggregator state

def _stateful_weighting(aggregator):
    """Nash-MTL's weighting is the one stateful TorchJD aggregator in the registry."""
    from torchjd.aggregation import NashMTL

    return aggregator.weighting if isinstance(aggregator, NashMTL) else None


_NASH_FIELDS = ("step", "prvs_alpha", "normalization_factor")


def _aggregator_state(aggregator) -> dict:
    w = _stateful_weighting(aggregator)
    if w is None:
        return {}
    import numpy as np

    return {k: torch.from_numpy(np.array(getattr(w, k))) if k != "step" else float(w.step)
            for k in _NASH_FIELDS}


def _load_aggregator_state(aggregator, state: dict) -> None:
    w = _stateful_weighting(aggregator)
    if w is None or not state:
        return
    w.step = float(state["step"])
    w.prvs_alpha = state["prvs_alpha"].numpy()
    w.normalization_factor = state["normalization_factor"].numpy()
    if w.step > 0:  # Nash-MTL builds its convex problem at step 0 only: rebuild it here
        w._init_optim_problem()
