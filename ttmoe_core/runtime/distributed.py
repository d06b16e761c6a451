"""Data-parallel training of one expert through Hugging Face ``accelerate`` (DDP).

``accelerate launch [--multi_gpu] --num_processes N -m ttmoe_core train-expert ...`` starts N
processes; each runs the same command. Every process draws the same batches (one generator seeded
with the config's seed), computes its contiguous share of each batch, and DDP (``Accelerator
.prepare_model``) averages the gradients, so N processes take the steps one process takes with the
same global batch (``--batch-size`` is the global batch): the same weights within float
tolerance. The head's dropout draws the whole batch's mask in every process and keeps its rows
(``rng.batch_rows``), so the generators stay in step. Only the main process writes the expert.

Nothing here changes the training loop (``experts.fit``): ``train_expert`` asks
:func:`current` whether it runs in a launched group, runs its forward through :meth:`DataParallel
.wrap`'s module and its per-batch loss through :meth:`DataParallel.sharded`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from . import rng

# set by torchrun / accelerate launch in every process of a group
_WORLD_ENV = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE")


def launched_world_size() -> int:
    """Processes of the launched group this process belongs to (1 when not launched)."""
    for key in _WORLD_ENV:
        if os.environ.get(key):
            return max(1, int(os.environ[key]))
    return 1


def share(total: int, world: int, rank: int) -> tuple[int, int]:
    """(start, stop) of process ``rank``'s contiguous share of ``total`` rows: sizes differ by at
    most one, lower ranks take the extra rows."""
    base, extra = divmod(total, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


@dataclass
class DataParallel:
    """This process's place in a data-parallel group (``accelerate.Accelerator``)."""
    accelerator: object

    @property
    def world_size(self) -> int:
        return self.accelerator.num_processes

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in DDP (its trainable parameters' gradients averaged over the group in
        backward); the returned module shares ``model``'s parameters: run the forward through
        it, give ``model`` itself to the optimizer."""
        return self.accelerator.prepare_model(model, device_placement=False)

    def sharded(self, batch_loss: Callable[[Sequence[int]], torch.Tensor]
                ) -> Callable[[list[int]], torch.Tensor]:
        """``batch_loss`` (mean loss of the rows it is given) turned into the loss of a global
        batch computed by the group: this process runs its share of ``rows``; the returned
        scalar's value is the mean over the whole batch, its gradient (after DDP's average) the
        gradient of that mean."""
        # torch.distributed only for data-parallel runs
        import torch.distributed as dist

        def loss(rows: list[int]) -> torch.Tensor:
            total = len(rows)
            start, stop = share(total, self.world_size, self.rank)
            if stop > start:
                with rng.batch_rows(start, stop, total):
                    local = batch_loss(rows[start:stop])
                weight = (stop - start) / total
            else:             # fewer rows than processes: take part in DDP's all-reduce with 0
                with rng.batch_rows(0, 1, total):
                    local = batch_loss(rows[:1])
                weight = 0.0
            scaled = local * (weight * self.world_size)       # DDP divides gradients by N
            value = (local.detach() * weight).reshape(1).clone()
            dist.all_reduce(value)                            # sum of weighted shares: the mean
            return scaled + (value[0] - scaled).detach()

        return loss


def current() -> DataParallel | None:
    """The data-parallel group this process was launched in (``accelerate launch`` / torchrun
    with more than one process), or None for a plain single process."""
    if launched_world_size() <= 1:
        return None
    # optional: accelerate only under `accelerate launch`
    from accelerate import Accelerator

    # without CUDA the group is CPU processes talking over gloo (accelerate's MULTI_CPU)
    return DataParallel(Accelerator(cpu=not torch.cuda.is_available()))


def is_main_process() -> bool:
    """False only in the non-main processes of a launched group (they must not write files)."""
    for key in ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK"):
        if os.environ.get(key):
            return int(os.environ[key]) == 0
    return True
