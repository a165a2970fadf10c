"""Ranger (RAdam + Lookahead, NERN.md §3) and the per-step learning-rate schedule."""

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


def make_optimizer(params, name: str, lr: float, betas, weight_decay: float) -> torch.optim.Optimizer:
    if name == "ranger":
        return Lookahead(torch.optim.RAdam(params, lr=lr, betas=betas, weight_decay=weight_decay))
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}")


def learning_rate(step: int, total: int, lr: float, min_lr: float, warmup: int) -> float:
    """Linear warm-up for `warmup` steps, then cosine decay to `min_lr` at `total`."""
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    span = max(1, total - warmup)
    t = min(1.0, (step - warmup) / span)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * t))
