"""How the processes of one run share the model: whole copies (``ddp``) or shards (``fsdp``).

The launcher (``torchrun``, ``accelerate launch``, SLURM through either) starts the processes
and sets ``WORLD_SIZE``/``RANK``; this module joins them into a process group and gives the
loop one object that knows how to run a loss, finish a step's gradients, and gather or
scatter the state a checkpoint holds.

``ddp``: every process keeps the whole model, wrapped in torch's ``DistributedDataParallel``
around the objective's loss (so the chunked loss, which calls the decoder trunk directly, runs
inside DDP's forward). The passes of an accumulation window but the last run under
``no_sync()``; the last one's backward all-reduces the accumulated gradients in buckets while
the backward still runs. Gradients are summed, not averaged, across processes, because the
loop already divides by the trained tokens of the whole window on every process.

``fsdp``: PyTorch FSDP2 (``fully_shard``) splits every decoder layer and the rest of the
model across processes, so parameters, gradients and optimizer state each take 1/N of the
memory. The loss runs inside one root module so the shards are gathered around it, and every
process runs the same number of forward/backward passes, because each pass is a collective.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from tunesmith.errors import TunesmithError
from tunesmith.methods import Method
from tunesmith.objectives import registration

STRATEGIES = ("ddp", "fsdp")


class ParallelError(TunesmithError):
    """The requested multi-process setup can't run; the message names the fix."""


@dataclass(frozen=True)
class Processes:
    """This process's place in the run: how many there are and which one this is."""

    world_size: int = 1
    rank: int = 0
    local_world_size: int = 1

    @classmethod
    def join(cls) -> Processes:
        """Join the launcher's process group (gloo on CPU, NCCL on CUDA); one process alone
        needs no group."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        if not torch.distributed.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            torch.distributed.init_process_group(backend=backend)
        local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
        return cls(world_size, torch.distributed.get_rank(), local)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def sum_(self, tensor: torch.Tensor) -> None:
        if self.distributed:
            torch.distributed.all_reduce(tensor)

    def max_int(self, value: int) -> int:
        if not self.distributed:
            return value
        tensor = torch.tensor([value], dtype=torch.int64, device=_collective_device())
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
        return int(tensor.item())

    def any(self, flag: bool) -> bool:
        """True on every process when it is true on any: a stop asked of one stops all."""
        return self.max_int(int(flag)) > 0

    def gather_to_first(self, value: Any) -> list[Any] | None:
        """Every process's ``value``, in rank order, on rank 0 (None elsewhere).

        Objects travel between this run's own processes only; nothing read from disk is
        unpickled here.
        """
        if not self.distributed:
            return [value]
        gathered: list[Any] | None = [None] * self.world_size if self.rank == 0 else None
        torch.distributed.gather_object(value, gathered, dst=0)
        return gathered

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()


def _collective_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


LossFn = Callable[[Any], tuple[torch.Tensor, int]]


class Parallel(Protocol):
    """What the loop and the pipeline ask of a strategy."""

    name: str
    processes: Processes
    module: nn.Module
    """The module to call .train()/.eval() on and take parameters from."""

    def loss_sum(self, batch: Any) -> tuple[torch.Tensor, int]: ...

    def forwards_to_run(self, local: int) -> int:
        """How many forward/backward passes this process must run when it has ``local``."""
        ...

    def gradient_pass(self, last: bool) -> AbstractContextManager[object]:
        """Wraps one forward/backward pass of a window; only the ``last`` one must reduce
        gradients across processes, the others may keep theirs local."""
        ...

    def finish_gradients(self, parameters: Sequence[nn.Parameter], loss: torch.Tensor) -> None:
        """Make gradients and the window's loss sums over every process."""
        ...

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The full trainable weights (collective); only rank 0's copy is complete."""
        ...

    def load_trainable_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Put full weights (rank 0's copy counts) into the model on every process."""
        ...

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]: ...

    def load_optimizer_state(
        self, optimizer: torch.optim.Optimizer, state: Mapping[str, Any]
    ) -> None: ...


class Replicated:
    """Every process holds the whole model; a window's gradients are summed over processes.

    With several processes the loss runs through ``DistributedDataParallel`` (see the module
    docstring). Its settings, and why:

    - the gradients are *summed* by a comm hook (DDP's default divides by the world size):
      each process's loss is already its share of one token mean over the whole window, so
      the sum is the gradient of one process training on the whole window, as before;
    - ``find_unused_parameters=True``: a trainable parameter may get no gradient from the
      loss (the LM head under the reward objective, which scores the last hidden state, when
      it is not tied to the embeddings). DDP then leaves that gradient ``None`` on every
      process, as one process would; the price is one walk of the autograd graph per window
      (only the synchronised pass does it). Passes that run second models (the frozen
      reference of dpo/ipo/rlhf, the teacher of distill, the reward model and the sampling
      of rlhf) run under ``no_grad`` inside the same forward and add no gradients to track;
    - not ``static_graph``: combined with ``no_sync()`` it stops reducing gradients after the
      first iteration (pytorch/pytorch#187732, huggingface/accelerate#3679);
    - ``forward_sync_buffers=False``: the model's buffers (rotary frequencies) never change,
      and a broadcast on every forward would be a collective in passes that processes run a
      different number of times (an epoch's last window, ``max_tokens_per_forward`` splits).

    Each process must run at least one pass per window (its backward joins the reduction),
    so one with no micro-batch left in the window runs a zero-weight filler pass.
    Evaluation (no gradients) calls the objective directly: DDP has nothing to do there.
    """

    name = "ddp"

    def __init__(self, model: nn.Module, objective: Any, processes: Processes) -> None:
        self.module = model
        self.processes = processes
        self._objective = objective
        self._ddp: nn.parallel.DistributedDataParallel | None = None
        if processes.distributed:
            self._ddp = nn.parallel.DistributedDataParallel(
                _LossRoot(model, objective),
                find_unused_parameters=True,
                forward_sync_buffers=False,
            )
            self._ddp.register_comm_hook(None, _sum_bucket)

    def loss_sum(self, batch: Any) -> tuple[torch.Tensor, int]:
        if self._ddp is not None and torch.is_grad_enabled():
            return self._ddp(batch)
        return self._objective.loss_sum(self.module, batch)

    def forwards_to_run(self, local: int) -> int:
        return max(local, 1) if self.processes.distributed else local

    def gradient_pass(self, last: bool) -> AbstractContextManager[object]:
        if self._ddp is None or last:
            return contextlib.nullcontext()
        return self._ddp.no_sync()

    def finish_gradients(self, parameters: Sequence[nn.Parameter], loss: torch.Tensor) -> None:
        self.processes.sum_(loss)  # the gradients were reduced during the last backward

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {
            name: p.detach().clone()
            for name, p in self.module.named_parameters()
            if p.requires_grad
        }

    def load_trainable_state(self, state: Mapping[str, torch.Tensor]) -> None:
        parameters = dict(self.module.named_parameters())
        missing = [name for name in state if name not in parameters]
        if missing:
            raise ParallelError(f"the checkpoint has weights the model lacks: {missing[:3]}")
        with torch.no_grad():
            for name, value in state.items():
                parameters[name].copy_(value)

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return optimizer.state_dict()

    def load_optimizer_state(
        self, optimizer: torch.optim.Optimizer, state: Mapping[str, Any]
    ) -> None:
        optimizer.load_state_dict(dict(state))


class _LossRoot(nn.Module):
    """The objective's loss as one module call: under FSDP the root unit (calling it gathers
    the shards the loss needs), under DDP the module whose forward DDP wraps."""

    def __init__(self, model: nn.Module, objective: Any) -> None:
        super().__init__()
        self.model = model
        self._objective = objective

    def forward(self, batch: Any) -> tuple[torch.Tensor, int]:
        return self._objective.loss_sum(self.model, batch)


_ROOT_PREFIX = "model."


def _sum_bucket(group, bucket):  # no annotations: DDP rejects a hook whose are strings
    """DDP comm hook: all-reduce a bucket of gradients as a sum (DDP's own averages)."""
    work = torch.distributed.all_reduce(bucket.buffer(), group=group, async_op=True)
    return work.get_future().then(lambda done: done.value()[0])


class Sharded:
    """FSDP2: each decoder layer and the remaining weights are split across processes."""

    name = "fsdp"

    def __init__(
        self,
        model: nn.Module,
        objective: Any,
        processes: Processes,
        *,
        param_dtype: torch.dtype | None = None,
    ) -> None:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        self.processes = processes
        self.module = _LossRoot(model, objective)
        # Names as the unsharded model has them: tied weights appear once, frozen ones not.
        self._trainable = [name for name, p in model.named_parameters() if p.requires_grad]
        # bf16 compute with fp32 gradient reduction on GPUs; fp32 throughout on CPU.
        policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
        layers = _decoder_layers(model)
        if not layers:
            raise ParallelError(
                "train.strategy=fsdp found no decoder layers to shard in this model (it lists "
                "none in _no_split_modules). Fix: use train.strategy=ddp."
            )
        for layer in layers:
            fully_shard(layer, mp_policy=policy)
        # The root reshards after forward too: after an evaluation (no backward to do it)
        # its unsharded weights would otherwise stay registered in place of the shards the
        # optimizer and the checkpoint expect.
        fully_shard(self.module, mp_policy=policy, reshard_after_forward=True)
        for unit in [*layers, self.module]:
            # The loop already divides by the tokens of the whole window on all processes,
            # so the gradients must be summed, not averaged, across processes.
            unit.set_gradient_divide_factor(1.0)
            unit.set_force_sum_reduction_for_comms(True)  # gloo has no pre-scaled sum

    def loss_sum(self, batch: Any) -> tuple[torch.Tensor, int]:
        return self.module(batch)

    def forwards_to_run(self, local: int) -> int:
        return self.processes.max_int(local)

    def gradient_pass(self, last: bool) -> AbstractContextManager[object]:
        return contextlib.nullcontext()  # every pass reduce-scatters its gradients

    def finish_gradients(self, parameters: Sequence[nn.Parameter], loss: torch.Tensor) -> None:
        self.processes.sum_(loss)  # gradients were reduce-scattered during backward

    def _options(self, **kwargs: bool):
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(full_state_dict=True, **kwargs)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        state = get_model_state_dict(
            self.module, options=self._options(cpu_offload=True, ignore_frozen_params=True)
        )
        if self.processes.rank != 0:
            return {}
        return {name: state[_ROOT_PREFIX + name] for name in self._trainable}

    def load_trainable_state(self, state: Mapping[str, torch.Tensor]) -> None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(
            self.module,
            {_ROOT_PREFIX + name: value for name, value in state.items()},
            options=self._options(broadcast_from_rank0=True, strict=False),
        )

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(
            self.module, optimizer, options=self._options(cpu_offload=True)
        )

    def load_optimizer_state(
        self, optimizer: torch.optim.Optimizer, state: Mapping[str, Any]
    ) -> None:
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        set_optimizer_state_dict(
            self.module,
            optimizer,
            optim_state_dict=dict(state),
            options=self._options(broadcast_from_rank0=True),
        )


def _decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks transformers marks as never to be split across devices."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or [])
    return [module for module in model.modules() if type(module).__name__ in names]


def build_parallel(
    strategy: str,
    model: nn.Module,
    objective: Any,
    processes: Processes,
    *,
    method: Method,
    param_dtype: torch.dtype | None = None,
) -> Parallel:
    """The strategy the run asked for, after checking the method and objective allow it."""
    if strategy == "ddp" or not processes.distributed:
        return Replicated(model, objective, processes)
    # 4-bit weights and prompt encoders are not plain tensors FSDP2 can shard; an objective
    # that samples (rlhf) runs a different number of forward passes on each process.
    if not method.shardable:
        raise ParallelError(
            f"train.strategy=fsdp does not support method {method.name!r}. Fix: use "
            "train.strategy=ddp for this method."
        )
    if not registration(objective.name).shardable:
        raise ParallelError(
            f"train.strategy=fsdp does not support objective {objective.name!r}. Fix: use "
            "train.strategy=ddp for this objective."
        )
    return Sharded(model, objective, processes, param_dtype=param_dtype)


def strategy_from_launcher(configured: str) -> str:
    """`accelerate launch --use_fsdp` asks for sharding; DeepSpeed is not an engine here.

    The flags are read with accelerate's own parser, so every spelling its launcher and
    config files accept (``true``, ``1``, ``yes`` …) means the same here.
    """
    from accelerate.utils import parse_flag_from_env

    if parse_flag_from_env("ACCELERATE_USE_DEEPSPEED"):
        raise ParallelError(
            "tunesmith does not run under DeepSpeed; FSDP gives the same ZeRO-3 sharding of "
            "weights, gradients and optimizer state. Fix: launch without --use_deepspeed and "
            "set train.strategy=fsdp (or accelerate launch --use_fsdp)."
        )
    if parse_flag_from_env("ACCELERATE_USE_FSDP"):
        return "fsdp"
    return configured
