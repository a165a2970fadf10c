"""The whole training step as one CUDA graph: capture once, replay every step.

    graphed = GraphedStep(step_fn, device)      # step_fn(*inputs) -> stacked losses; device work only
    losses = graphed(x, which)                  # this step's input tensors (each may be None)

On a GPU a NeRN step is ~1,300 small kernels; launched one by one from Python they take several
times longer than the GPU needs to run them. `GraphedStep` follows PyTorch's whole-network
capture: the first WARMUP_STEPS calls run `step_fn` eagerly on a side stream (they are real
training steps; they also create the optimiser's state and the autograd and cuBLAS set-up that
must exist before capture), the next call captures one call of `step_fn` into a
`torch.cuda.CUDAGraph` on that stream — forward of the predictor and of both networks, the three
losses, backward, gradient clipping, the optimiser step and the parameter-average update — and
replays it; every later call copies its inputs into the graph's static input buffers and
replays. The step function returns its losses stacked in one tensor; each call returns a copy.

What the step function must be (NernRun's is): no host synchronisation (no `.item()`), no
host-to-device copies, static shapes, no random numbers, and every per-step host value (the
learning rate, the average's weight) read from a device tensor written before the call, never
baked in as a Python number. Randomness stays outside: the caller makes this step's input
batch (sampling and augmentation, a few kernels drawn from a generator on the device) and
passes it in, with the batch's image rows where the step gathers cached teacher outputs.
Gradients are set to None just before the capture (`before_capture`), so the captured backward
allocates them in the graph's memory pool and every replay rewrites them.

A new input shape or None-ness (the end of `distill_warmup_steps`) starts over: warm-up, then
a new capture. `reset()` drops the graph; call it whenever the tensors the graph reads or writes
are replaced (loading an optimiser state makes new state tensors). On the CPU — the tests run
this path there — `GraphedStep` runs the same step function eagerly on the static buffers.

`cuda_graphs_reason` says why a configuration cannot be captured; `use_cuda_graphs` resolves
`FitConfig.cuda_graphs` (None: on exactly where it can be).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .config import FitConfig
from .errors import ConfigError

WARMUP_STEPS = 3  # eager steps on the side stream before the capture (PyTorch's examples use 3)


def cuda_graphs_reason(config: FitConfig, device: torch.device, num_kernels: int) -> str | None:
    """Why the training step of `config` on `device` cannot be one CUDA graph; None when it can."""
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device (this run is on {device.type})"
    if 0 < config.kernel_batch_size < num_kernels:
        return "kernel_batch_size > 0 draws a new kernel batch on the host every step; use 0 (all kernels)"
    if config.optimizer != "adam":
        return f"the {config.optimizer!r} optimiser is not capture-safe (Lookahead's host counter); use 'adam'"
    return None


def use_cuda_graphs(config: FitConfig, device: torch.device, num_kernels: int) -> bool:
    """FitConfig.cuda_graphs resolved: None = where the step can be captured; True where it
    cannot is a ConfigError with the reason."""
    reason = cuda_graphs_reason(config, device, num_kernels)
    if config.cuda_graphs and reason is not None:
        raise ConfigError(f"cuda_graphs=True is impossible here: {reason}")
    return reason is None if config.cuda_graphs is None else config.cuda_graphs


class GraphedStep:
    """`step_fn` captured as a CUDA graph after WARMUP_STEPS eager calls (see the module docstring)."""

    def __init__(self, step_fn: Callable[..., torch.Tensor], device: torch.device,
                 before_capture: Callable[[], None] = lambda: None, warmup: int = WARMUP_STEPS):
        """before_capture: e.g. `optimizer.zero_grad(set_to_none=True)`, so that the captured
        backward allocates the gradients in the graph's own memory pool."""
        self.step_fn = step_fn
        self.device = device
        self.before_capture = before_capture
        self.warmup = warmup
        self.captures = 0  # graphs captured so far (benchmarks/graph_parity.py reports it)
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.reset()

    def reset(self) -> None:
        """Forget the graph and the static input: the next calls warm up and capture again."""
        self._key: tuple | None = None  # None = nothing yet; else each input's (shape, dtype) or None
        self._inputs: list[torch.Tensor | None] = []
        self._graph: torch.cuda.CUDAGraph | None = None
        self._out: torch.Tensor | None = None
        self._eager_calls = 0

    @property
    def captured(self) -> bool:
        return self._graph is not None

    def __call__(self, *inputs: torch.Tensor | None) -> torch.Tensor:
        key = tuple(None if t is None else (tuple(t.shape), t.dtype) for t in inputs)
        if key != self._key:
            self.reset()
            self._key = key
            self._inputs = [None if t is None else torch.empty_like(t) for t in inputs]
        for static, t in zip(self._inputs, inputs):
            if t is not None:
                static.copy_(t)
        if self._stream is None:
            return self.step_fn(*self._inputs)
        if self._graph is not None:
            self._graph.replay()
            return self._out.clone()  # the static output is rewritten by the next replay
        if self._eager_calls < self.warmup:
            self._eager_calls += 1
            return self._on_side_stream(lambda: self.step_fn(*self._inputs))
        return self._capture()

    def _on_side_stream(self, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        current = torch.cuda.current_stream(self.device)
        self._stream.wait_stream(current)
        with torch.cuda.stream(self._stream):
            out = fn()
        current.wait_stream(self._stream)
        return out

    def _capture(self) -> torch.Tensor:
        """Record one step into a new graph (nothing runs while recording), then replay it."""
        graph = torch.cuda.CUDAGraph()
        current = torch.cuda.current_stream(self.device)
        self._stream.wait_stream(current)
        self.before_capture()
        with torch.cuda.graph(graph, stream=self._stream):
            out = self.step_fn(*self._inputs)
        current.wait_stream(self._stream)
        self._graph, self._out = graph, out
        self.captures += 1
        graph.replay()
        return out.clone()


__all__ = ["WARMUP_STEPS", "GraphedStep", "cuda_graphs_reason", "use_cuda_graphs"]
