"""Exponential moving average of a module's parameters (Polyak averaging).

    avg = ParameterAverage(predictor, decay=0.998)
    ...  optimizer.step(); avg.update(predictor)
    with avg.applied(predictor):
        rows = predictor(embedding)          # the averaged predictor

Training never sees the average: it only decides what is evaluated and packaged. The decay
warms up as min(decay, (1 + n) / (10 + n)) after n updates, so early averages are not
dominated by the random initialisation.

`update` is two halves a CUDA graph needs apart: `advance` (on the host: count the update and
write this update's weight 1 − decay into a 0-dim tensor on the parameters' device) and `blend`
(on the device only: shadow ← lerp(shadow, parameter, weight)), which a captured training step
replays while the host advances outside the graph.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class ParameterAverage:
    def __init__(self, module: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must lie in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.shadow = {k: p.detach().clone() for k, p in module.named_parameters()}
        first = next(iter(self.shadow.values()))
        self._weight = torch.zeros((), dtype=first.dtype, device=first.device)  # 1 − decay of this update

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    def update(self, module: nn.Module) -> None:
        self.advance()
        self.blend(module)

    def advance(self) -> None:
        """Count one update and write its weight (1 − decay) to the device (see the module docstring)."""
        self.updates += 1
        self._weight.fill_(1.0 - self.current_decay())

    @torch.no_grad()
    def blend(self, module: nn.Module) -> None:
        """Move the shadow towards the parameters by the weight `advance` wrote; device work only."""
        names = list(self.shadow)
        params = dict(module.named_parameters())
        torch._foreach_lerp_([self.shadow[k] for k in names], [params[k].detach() for k in names],
                             [self._weight] * len(names))

    @contextmanager
    def applied(self, module: nn.Module) -> Iterator[nn.Module]:
        """Swap the averaged values into `module` for the duration of the block."""
        params = dict(module.named_parameters())
        saved = {k: params[k].detach().clone() for k in self.shadow}
        with torch.no_grad():
            for k, v in self.shadow.items():
                params[k].copy_(v)
        try:
            yield module
        finally:
            with torch.no_grad():
                for k, v in saved.items():
                    params[k].copy_(v)

    def averaged_state_dict(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """`module.state_dict()` with the averaged parameters (buffers as they are)."""
        state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        state.update({k: v.detach().clone() for k, v in self.shadow.items()})
        return state

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict) -> None:
        if set(state["shadow"]) != set(self.shadow):
            raise ValueError("parameter average belongs to a different module")
        self.decay = float(state["decay"])
        self.updates = int(state["updates"])
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)


__all__ = ["ParameterAverage"]
