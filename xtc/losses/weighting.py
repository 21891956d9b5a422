"""Loss weighting: combine the group losses (L_S, L_D) into the total (docs/method.md §3.4).

One small interface, :class:`Weighting`: ``forward(groups) -> total``, ``after_step()`` (after
``optimizer.step()``), ``end_epoch(reduce)`` (once per epoch) and ``weights()`` for logging. The
names are the ``WEIGHTINGS`` registry: ``fixed``, ``uncertainty``, ``gradnorm``, ``dwa``,
``famo`` (TorchJD's scalarizer). Gradient aggregators (MGDA, UPGrad, ...) are not
weightings: see :mod:`xtc.losses.aggregation`.
Learnable weights are ``nn.Parameter``s, optimised with the network by the same optimiser.

State (DWA's loss sums, GradNorm's L(0)) changes in ``after_step`` only: ``forward`` stashes
what its step would add and ``after_step`` commits it, so a step the trainer skips (a
non-finite loss with ``train.nonfinite=skip``) leaves no trace; the next ``forward`` replaces
the stash. The stash is a plain attribute, not a buffer: it is never in a checkpoint.
"""

from __future__ import annotations

import copy
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from xtc.errors import ConfigError
from xtc.registry import Registry

WEIGHTINGS = Registry("weighting")
UNCERTAINTY_FORMS = ("kendall", "authors")  # loss.uncertainty_form


class Weighting(nn.Module):
    """Base: ``names`` are the group names, in the order ``forward`` expects them."""

    def __init__(self, names: Sequence[str]):
        super().__init__()
        if not names:
            raise ValueError("a weighting needs at least one loss group")
        self.names = tuple(names)

    def stack(self, groups: dict[str, torch.Tensor]) -> torch.Tensor:
        """(n,) tensor of the group losses in ``self.names`` order."""
        if set(groups) != set(self.names):
            raise ValueError(f"{type(self).__name__} expects loss groups {list(self.names)}; "
                             f"got {sorted(groups)}")
        return torch.stack([groups[n] for n in self.names])

    def forward(self, groups: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def after_step(self) -> None:
        """Called after ``optimizer.step()``."""

    def end_epoch(self, reduce: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> None:
        """Called once at the end of every training epoch. ``reduce`` sums a tensor over
        the ranks of a distributed run (None in one process)."""

    def weights(self) -> dict[str, float]:
        """The current multiplier of every group, for logging."""
        return {n: 1.0 for n in self.names}

    # FAMO learns from the losses *after* the step, on the same batch: the trainer recomputes
    # them (no gradient, BatchNorm statistics restored) and calls ``update``.
    recomputes_losses = False

    def update(self, groups: dict[str, torch.Tensor]) -> None:
        """Called after ``after_step`` with the group losses recomputed on the step's batch
        (only when ``recomputes_losses``)."""

    def optimised_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters the run's optimiser steps (FAMO steps its logits itself)."""
        return list(self.parameters())


@WEIGHTINGS.register("fixed")
class FixedWeighting(Weighting):
    """L = sum_i L_i (the authors' "no balancing" branch)."""

    def forward(self, groups: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.stack(groups).sum()


@WEIGHTINGS.register("uncertainty")
class UncertaintyWeighting(Weighting):
    """Homoscedastic uncertainty weighting (Kendall, Gal, Cipolla, CVPR 2018).

    One learnable s_i = log sigma_i^2 per group, initialised to 0.

    * ``form="kendall"``: L = sum_i 1/2 e^{-s_i} L_i + s_i / 2, Kendall's regression form
      1/(2 sigma^2) L + log sigma. Kendall's classification form is e^{-s} L + s/2; we use the
      regression form for both groups because each group mixes a regression and a
      classification term, and the optimum e^{-s} = 1/L (weight 1/(2L)) keeps the relative
      weighting of the groups the same either way.
    * ``form="authors"``: L = sum_i 1/2 e^{-s_i} L_i + s_i, the authors' code (§11 defect 6):
      optimum e^{-s} = 2/L, the same relative weighting at twice the overall scale.

    ``weights()`` reports the multipliers 1/2 e^{-s_i}.
    """

    def __init__(self, names: Sequence[str], form: str = "kendall"):
        super().__init__(names)
        if form not in UNCERTAINTY_FORMS:
            raise ConfigError(f"unknown uncertainty form '{form}'; choose kendall or authors")
        self.form = form
        self.log_vars = nn.Parameter(torch.zeros(len(self.names)))

    def forward(self, groups: dict[str, torch.Tensor]) -> torch.Tensor:
        losses = self.stack(groups)
        s = self.log_vars
        regulariser = s / 2 if self.form == "kendall" else s
        return (0.5 * torch.exp(-s) * losses + regulariser).sum()

    def weights(self) -> dict[str, float]:
        w = (0.5 * torch.exp(-self.log_vars.detach())).tolist()
        return dict(zip(self.names, w))


@WEIGHTINGS.register("gradnorm")
class GradNormWeighting(Weighting):
    """GradNorm (Chen, Badrinarayanan, Lee, Rabinovich, ICML 2018), fixing the authors' defects.

    Weights w_i (init 1) are learnable. Each training step, with W = ``shared_parameter``:

        G_i  = w_i * ||grad_W L_i||           (the norm is detached: ||grad_W (w_i L_i)||
                                               = w_i ||grad_W L_i||, so no create_graph)
        r_i  = (L_i / L_i(0)) / mean_j (L_j / L_j(0))
        C_i  = sg(mean(G) * r_i^alpha)
        total = sum_i sg(w_i) L_i + sum_i |G_i - C_i|

    One ``backward`` then gives the network gradients of sum_i w_i L_i only (the GradNorm loss
    is a function of w alone; the authors' leaked into the network) and w gradients of the
    GradNorm loss only. L_i(0) is recorded once, by the first applied training step with finite
    losses (the authors reset it every step of epoch 1; a skipped non-finite first batch would
    otherwise poison every later ratio); until then the step's own losses serve (r_i = 1).
    ``after_step`` renormalises w in place so sum_i w_i = n (the same Parameter the optimiser
    holds; the authors replaced it). The authors also halved each term (l_i = 1/2 w_i L_i), a
    constant scale we drop. In eval mode (or without grad) the total is sum_i w_i L_i with
    detached weights. The reported ``total`` includes the GradNorm term.
    """

    def __init__(self, names: Sequence[str], shared_parameter: torch.Tensor, alpha: float = 0.16):
        super().__init__(names)
        if not isinstance(shared_parameter, torch.Tensor) or not shared_parameter.requires_grad:
            raise ValueError("gradnorm needs shared_parameter, the weight of the last shared "
                             "layer (model.last_shared_layer()), with requires_grad=True")
        self.alpha = alpha
        self.task_weights = nn.Parameter(torch.ones(len(self.names)))
        self._shared = (shared_parameter,)  # a tuple: not registered, the model owns it
        self.register_buffer("initial_losses", torch.zeros(len(self.names)))
        self.register_buffer("initialised", torch.tensor(False))
        self._pending_initial: Optional[torch.Tensor] = None  # L(0) candidate, see after_step

    def forward(self, groups: dict[str, torch.Tensor]) -> torch.Tensor:
        losses = self.stack(groups)
        w = self.task_weights
        if not (self.training and torch.is_grad_enabled() and losses.requires_grad):
            return (w.detach() * losses).sum()
        initial = self.initial_losses
        if not bool(self.initialised):
            initial = self._pending_initial = losses.detach().clone()
        shared = self._shared[0]
        norms = []
        for loss in losses.unbind():
            (grad,) = torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True)
            norms.append(torch.zeros((), device=losses.device) if grad is None
                         else grad.detach().norm())
        grad_norms = w * torch.stack(norms)                            # G_i, grad only to w
        ratios = losses.detach() / initial.clamp_min(1e-12)
        relative = ratios / ratios.mean().clamp_min(1e-12)             # r_i
        targets = (grad_norms.mean() * relative.pow(self.alpha)).detach()  # C_i
        gradnorm_loss = (grad_norms - targets).abs().sum()
        return (w.detach() * losses).sum() + gradnorm_loss

    @torch.no_grad()
    def after_step(self) -> None:
        pending, self._pending_initial = self._pending_initial, None
        if pending is not None and not bool(self.initialised) and bool(pending.isfinite().all()):
            self.initial_losses.copy_(pending)
            self.initialised.fill_(True)
        w = self.task_weights
        w.clamp_(min=1e-4)  # keep weights positive if a large step overshoots
        w.mul_(len(self.names) / w.sum())

    def weights(self) -> dict[str, float]:
        return dict(zip(self.names, self.task_weights.detach().tolist()))


@WEIGHTINGS.register("dwa")
class DWAWeighting(Weighting):
    """Dynamic Weight Average (Liu, Johns, Davison, "End-to-End Multi-Task Learning with
    Attention", CVPR 2019).

    w_k(t) = n exp(r_k(t-1) / T) / sum_j exp(r_j(t-1) / T), r_k(t-1) = Lbar_k(t-1) / Lbar_k(t-2)
    with Lbar the mean training loss of group k over an epoch; w = 1 for the first two epochs.
    Losses are accumulated in training mode only, on applied steps (``after_step``);
    ``end_epoch`` rolls the epoch means, summed over the ranks first under DDP so every rank
    gets the weights of the global batch. The weights are constants (no gradient).
    """

    def __init__(self, names: Sequence[str], temperature: float = 2.0):
        super().__init__(names)
        n = len(self.names)
        self.temperature = temperature
        self.register_buffer("current", torch.ones(n))
        self.register_buffer("running_sum", torch.zeros(n))
        self.register_buffer("running_count", torch.zeros((), dtype=torch.long))
        self.register_buffer("history", torch.zeros(2, n))  # [t-2, t-1]
        self.register_buffer("epochs", torch.zeros((), dtype=torch.long))
        self._pending: Optional[torch.Tensor] = None  # this step's losses, see after_step

    def forward(self, groups: dict[str, torch.Tensor]) -> torch.Tensor:
        losses = self.stack(groups)
        if self.training:
            self._pending = losses.detach().to(self.running_sum.dtype, copy=True)
        return (self.current.to(losses.dtype) * losses).sum()

    @torch.no_grad()
    def after_step(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            self.running_sum += pending
            self.running_count += 1

    @torch.no_grad()
    def end_epoch(self, reduce: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> None:
        if reduce is not None:  # every rank calls it (a collective), even with no steps
            total = reduce(torch.cat([self.running_sum.double(),
                                      self.running_count.double().reshape(1)]))
            self.running_sum.copy_(total[:-1].to(self.running_sum.dtype))
            self.running_count.fill_(int(round(float(total[-1]))))
        self._pending = None  # a skipped last step's stash
        if int(self.running_count) == 0:  # no training step this epoch: nothing to roll
            return
        mean = self.running_sum / self.running_count
        self.history.copy_(torch.stack([self.history[1], mean]))
        self.epochs += 1
        self.running_sum.zero_()
        self.running_count.zero_()
        if int(self.epochs) >= 2:
            ratio = self.history[1] / self.history[0].clamp_min(1e-12)
            w = len(self.names) * torch.softmax(ratio / self.temperature, dim=0)
            self.current.copy_(w.to(self.current.dtype))

    def weights(self) -> dict[str, float]:
        return dict(zip(self.names, self.current.tolist()))


@WEIGHTINGS.register("famo")
class FamoWeighting(Weighting):
    """FAMO, Fast Adaptive Multitask Optimization (Liu, Liu, Jin, Stone, Liu, NeurIPS 2023),
    through TorchJD's scalarizer ``torchjd.scalarization.FAMO``:

        total = c sum_i z_i log(L_i + eps),  z = softmax(w),  c = sg(1 / sum_i z_i / (L_i + eps))

    so one backward gives a convex combination of the group gradients, weighted towards the
    groups whose loss falls slowest. The logits w are not trained by that backward: after the
    step, the trainer recomputes the group losses on the same batch and :meth:`update` takes
    one step of FAMO's own Adam (``loss.famo_lr``, ``loss.famo_weight_decay``) on
    log L_before - log L_after. The logits and that Adam's state are in the criterion's
    state_dict, so a resume continues exactly. Outside training the total is the plain sum
    of the groups; ``weights()`` reports z.
    """

    recomputes_losses = True

    def __init__(self, names: Sequence[str], lr: float = 0.025, weight_decay: float = 1e-3):
        super().__init__(names)
        from torchjd.scalarization import FAMO

        self.famo = FAMO(len(self.names), lr=lr, weight_decay=weight_decay)

    def forward(self, groups: dict[str, torch.Tensor]) -> torch.Tensor:
        losses = self.stack(groups)
        if not (self.training and torch.is_grad_enabled()):
            return losses.sum()
        return self.famo(losses)

    def update(self, groups: dict[str, torch.Tensor]) -> None:
        self.famo.update(self.stack(groups).detach())

    def optimised_parameters(self) -> list[torch.nn.Parameter]:
        return []

    def weights(self) -> dict[str, float]:
        z = torch.softmax(self.famo._w.detach().flatten(), dim=0)
        return dict(zip(self.names, z.tolist()))

    # FAMO's Adam lives outside any module (torchjd 0.18: ``FAMO._optimizer``, created on the
    # first update): carry its state in the state_dict
    def get_extra_state(self) -> dict:
        opt = self.famo._optimizer
        return {"adam": opt.state_dict() if opt is not None else None}

    def set_extra_state(self, state: dict) -> None:
        if state.get("adam") is None:
            self.famo._optimizer = None
            return
        self.famo._optimizer = torch.optim.Adam([self.famo._w], lr=self.famo.lr,
                                                weight_decay=self.famo.weight_decay)
        # a copy: Adam.load_state_dict keeps the given tensors, which an in-process
        # state_dict() shares with the live optimizer
        self.famo._optimizer.load_state_dict(copy.deepcopy(state["adam"]))


def build_weighting(name: str, names: Sequence[str], *, uncertainty_form: str = "kendall",
                    gradnorm_alpha: float = 0.16, dwa_temperature: float = 2.0,
                    famo_lr: float = 0.025, famo_weight_decay: float = 1e-3,
                    shared_parameter: torch.Tensor | None = None) -> Weighting:
    """Build the weighting registered as ``name`` for the loss groups ``names``."""
    cls = WEIGHTINGS.get(name)
    if cls is UncertaintyWeighting:
        return cls(names, form=uncertainty_form)
    if cls is GradNormWeighting:
        if shared_parameter is None:
            raise ValueError("weighting 'gradnorm' needs the shared layer's weight: pass the "
                             "model (build_criterion(config, model)) or shared_parameter")
        return cls(names, shared_parameter, alpha=gradnorm_alpha)
    if cls is DWAWeighting:
        return cls(names, temperature=dwa_temperature)
    if cls is FamoWeighting:
        return cls(names, lr=famo_lr, weight_decay=famo_weight_decay)
    return cls(names)
