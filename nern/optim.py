"""Ranger (RAdam + Lookahead, NERN.md §3), Adam, and the per-step learning-rate schedule.

A CUDA-graph run (`nern.graphed`) needs an optimiser whose step is device work only: Adam with
`capturable=True` and the learning rate as a 0-dim tensor on the parameters' device, which
`set_learning_rate` rewrites in place before each step (`make_optimizer(..., graph_safe=True)`).
Every other run keeps a Python float learning rate, as before.
"""

from __future__ import annotations

import math

import torch


class Lookahead(torch.optim.Optimizer):
    """Every k inner steps, move the slow weights α of the way to the fast ones and reset the
    fast weights to them (Zhang et al. 2019)."""

    def __init__(self, inner: torch.optim.Optimizer, k: int = 6, alpha: float = 0.5):
        self.inner = inner
        self.k, self.alpha = k, alpha
        self.param_groups = inner.param_groups
        self.defaults = inner.defaults
        self.state = inner.state
        self._slow = [[p.detach().clone() for p in g["params"]] for g in self.param_groups]
        self._count = 0

    @torch.no_grad()
    def step(self, closure=None):
        loss = self.inner.step(closure)
        self._count += 1
        if self._count % self.k == 0:
            for group, slows in zip(self.param_groups, self._slow):
                for p, slow in zip(group["params"], slows):
                    slow.add_(p - slow, alpha=self.alpha)
                    p.copy_(slow)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"inner": self.inner.state_dict(), "slow": self._slow, "count": self._count}

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state["inner"])
        self.param_groups = self.inner.param_groups
        self.state = self.inner.state
        with torch.no_grad():
            for mine, saved in zip(self._slow, state["slow"]):
                for a, b in zip(mine, saved):
                    a.copy_(b)
        self._count = int(state["count"])


# How an optimiser runs, not what it has learned: kept when a saved state is loaded.
RUNTIME_OPTIONS = ("lr", "capturable", "foreach", "fused")


def make_optimizer(params, name: str, lr: float, betas, weight_decay: float, *,
                   graph_safe: bool = False) -> torch.optim.Optimizer:
    """Ranger or Adam. graph_safe (Adam only): the learning rate is a 0-dim tensor on the
    parameters' device and, on CUDA, the step is capturable (no host sync, state on the device)."""
    params = list(params)
    if graph_safe and name != "adam":
        raise ValueError(f"no graph-safe {name!r} optimiser (only adam)")
    if name == "ranger":
        return Lookahead(torch.optim.RAdam(params, lr=lr, betas=betas, weight_decay=weight_decay))
    if name == "adam" and graph_safe:
        device = params[0].device
        lr_t = torch.tensor(lr, dtype=torch.float32, device=device)
        return torch.optim.Adam(params, lr=lr_t, betas=betas, weight_decay=weight_decay,
                                capturable=device.type == "cuda")
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}")


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """This step's learning rate: written in place into a tensor learning rate (one small
    kernel, no copy from the host), assigned as a float otherwise."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """`optimizer.load_state_dict(state)`, keeping this optimiser's RUNTIME_OPTIONS: a state saved
    by a CUDA-graph run (tensor lr, capturable) loads into an eager run and back, and a tensor
    learning rate stays the object `set_learning_rate` writes (the schedule sets it every step)."""
    kept = [{k: g[k] for k in RUNTIME_OPTIONS if k in g} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, own in zip(optimizer.param_groups, kept):
        group.update(own)


def learning_rate(step: int, total: int, lr: float, min_lr: float, warmup: int) -> float:
    """Linear warm-up for `warmup` steps, then cosine decay to `min_lr` at `total`."""
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    span = max(1, total - warmup)
    t = min(1.0, (step - warmup) / span)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * t))
