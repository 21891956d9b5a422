"""Data-parallel training with PyTorch's own engine (``torchrun`` + DistributedDataParallel).

``torchrun --nproc_per_node N -m xtc train ...`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``;
:func:`setup` then joins the process group (NCCL on CUDA, gloo on CPU). ``train.batch_size``
is the *global* batch: each rank takes ``batch_size / world`` images of every global batch, so
N processes see exactly the batches one process would. Rank 0 writes checkpoints and results.

``torch.nn.SyncBatchNorm`` runs only on GPUs; :class:`SyncBatchNorm2d` is the CPU (gloo)
equivalent used there, so the same configuration is testable on a laptop.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False  # setup() created the process group, so teardown() ends it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def setup() -> Context:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    owns = not dist.is_initialized()
    if owns:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
    return Context(rank=rank, world=world, local_rank=local, owns_group=owns)


def teardown(ctx: Context) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def device_for(ctx: Context, device: torch.device) -> torch.device:
    """Each rank uses its own GPU (``cuda:LOCAL_RANK``); CPU ranks share the CPU."""
    if ctx.active and device.type == "cuda":
        return torch.device("cuda", ctx.local_rank)
    return device


def barrier(ctx: Context) -> None:
    if ctx.active:
        dist.barrier()


def average_gradients(ctx: Context, parameters) -> None:
    """Average ``.grad`` over ranks for parameters outside DDP (e.g. uncertainty weights)."""
    if not ctx.active:
        return
    for p in parameters:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= ctx.world


def all_reduce_sum(ctx: Context, tensor: torch.Tensor) -> torch.Tensor:
    if ctx.active:
        dist.all_reduce(tensor)
    return tensor


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """BatchNorm -> synchronised BatchNorm: torch's on CUDA, :class:`SyncBatchNorm2d` on CPU."""
    if next(module.parameters()).is_cuda:
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert_cpu(module)


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are taken over the batch of *all* ranks.

    Mean and variance come from differentiable all-reduces (two passes: sums, then squared
    deviations), so the backward pass also sums across ranks and the result equals one
    BatchNorm over the global batch up to float rounding. As in torch's BatchNorm, a bf16
    input (bf16 autocast) gets fp32 statistics and normalisation (bf16 keeps 8 mantissa bits:
    its sums and counts are off by up to 0.4%, and the fp32 running statistics refuse them)
    and an output of the input's dtype and memory format. Outside training, or without a
    process group, it is a plain BatchNorm2d; a one-rank group takes the synced path too.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        # Autocast off: every op below must stay fp32 (the casts are explicit).
        with torch.autocast(x.device.type, enabled=False):
            x32 = x.float()  # keeps channels_last; its backward casts the gradient back
            channels = x.shape[1]
            count = torch.tensor([x.numel() / channels], dtype=torch.float32, device=x.device)
            sums = _AllReduceSum.apply(torch.cat([x32.sum(dim=(0, 2, 3)), count]))
            total = sums[-1]
            mean = sums[:channels] / total
            centred = x32 - mean.view(1, -1, 1, 1)
            var = _AllReduceSum.apply(centred.pow(2).sum(dim=(0, 2, 3))) / total
            if self.track_running_stats:
                with torch.no_grad():
                    self.num_batches_tracked += 1
                    # momentum=None: cumulative average, as in torch's BatchNorm
                    momentum = (self.momentum if self.momentum is not None
                                else 1.0 / self.num_batches_tracked.item())
                    unbiased = var * total / (total - 1)
                    self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                    self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
            out = centred * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
            if self.affine:
                out = (out * self.weight.float().view(1, -1, 1, 1)
                       + self.bias.float().view(1, -1, 1, 1))
            return out.to(x.dtype)


class _AllReduceSum(torch.autograd.Function):
    """Differentiable sum over ranks: every rank's output feeds its own loss, so each input's
    gradient is the sum of all ranks' output gradients, another all-reduce.

    Not ``torch.distributed.nn.functional.all_reduce`` (the same two all-reduces): it is
    deprecated, and importing it once a gloo group exists (its remote-module code generates
    and imports a module) made a two-rank run abort at exit, "terminate called without an
    active exception", in 21 of 55 runs (``tools/gloo_exit_check.py``).
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad


def _convert_cpu(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, SyncBatchNorm2d):
        new = SyncBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, _convert_cpu(child))
    return module
