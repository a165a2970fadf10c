"""One step's losses, left on the device until someone reads them.

    losses = StepLosses(["rec", "kd", "loss"], values, {"lr": 3e-3}, step=120)
    dict(losses)      # one transfer of the stacked values (a host sync on CUDA), then the check

Reading a loss every step (`.item()` per term) makes the host wait for the device each step,
which on a GPU costs more than the step itself. `NernRun.train_step` therefore returns this
lazy mapping: the losses stay a stacked device tensor until the first read, which copies them
to the host in one transfer and raises the divergence error if any is non-finite. The training
loop (`nern.trainer.Trainer`) reads them every `log_every` steps and at the last step; the
steps in between never wait for the device. On the CPU a read costs nothing and `fit` reads
every step.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence

import torch

from .errors import ConfigError


class StepLosses(Mapping[str, float]):
    """Losses `names` (stacked in one tensor `values`, on the device) and host values such as "lr"."""

    def __init__(self, names: Sequence[str], values: torch.Tensor, host: Mapping[str, float], step: int):
        if values.shape != (len(names),):
            raise ValueError(f"{len(names)} loss names for values of shape {tuple(values.shape)}")
        self.names = list(names)
        self.stacked = values
        self.host = dict(host)
        self.step = step
        self._floats: dict[str, float] | None = None

    @property
    def read(self) -> bool:
        """Whether the values have been copied to the host yet."""
        return self._floats is not None

    def _host_values(self) -> dict[str, float]:
        if self._floats is None:
            floats = dict(zip(self.names, self.stacked.tolist()))  # the one transfer
            if not all(math.isfinite(v) for v in floats.values()):
                raise ConfigError(f"training diverged at step {self.step} (non-finite loss); lower lr")
            self._floats = {**floats, **self.host}
        return self._floats

    def __getitem__(self, key: str) -> float:
        return self._host_values()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._host_values())

    def __len__(self) -> int:
        return len(self.names) + len(self.host)


__all__ = ["StepLosses"]
