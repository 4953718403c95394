"""A function of tensors captured once as a CUDA graph and replayed: one launch instead of hundreds.

A beam search over a small model is a few hundred small kernels (every decoder layer of every step), so at modest
batch sizes the GPU waits on the host launching them. Because the engine never synchronises with the host, the
whole search (the T5 encoder too) can be recorded once as a CUDA graph for fixed input shapes and replayed with
new inputs copied into the captured buffers (PyTorch's CUDA graph recipe: warm up on a side stream, capture,
replay). :func:`genrec.seq2seq.t5_step.t5_search_function` gives the T5 search in this form.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class CudaGraph:
    """``fn(*inputs)`` captured as a CUDA graph for the shapes and dtypes of ``example``, then replayed.

    Args:
        fn: a function of tensors that returns a tensor or a tuple (or NamedTuple) of tensors, with no host
            synchronisation and no data-dependent shapes (it runs while the stream is being captured).
        example: the inputs it is captured with, on one CUDA device; later calls must match their shapes and dtypes.
        warmup: calls on a side stream before the capture (first-call allocations, library handles).

    Raises:
        ValueError: an input not on a CUDA device.
    """

    def __init__(self, fn: Callable[..., Any], *example: torch.Tensor, warmup: int = 2) -> None:
        if not example or any(not isinstance(x, torch.Tensor) or x.device.type != "cuda" for x in example):
            raise ValueError("CUDA graphs need tensor inputs on a CUDA device")
        self.inputs = [x.clone() for x in example]
        side = torch.cuda.Stream(device=example[0].device)
        side.wait_stream(torch.cuda.current_stream(example[0].device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                fn(*self.inputs)
        torch.cuda.current_stream(example[0].device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = fn(*self.inputs)

    def __call__(self, *inputs: torch.Tensor) -> Any:
        """Copies ``inputs`` into the captured buffers, replays the graph and returns copies of its outputs."""
        if len(inputs) != len(self.inputs):
            raise ValueError(f"expected {len(self.inputs)} inputs, got {len(inputs)}")
        for i, (buffer, x) in enumerate(zip(self.inputs, inputs)):
            if x.shape != buffer.shape or x.dtype != buffer.dtype:
                raise ValueError(f"input {i}: captured for {tuple(buffer.shape)} {buffer.dtype}, got "
                                 f"{tuple(x.shape)} {x.dtype}: capture another CudaGraph for this shape")
            buffer.copy_(x, non_blocking=True)
        self.graph.replay()
        # The outputs live in the graph's memory and are overwritten by the next replay: hand out copies.
        if isinstance(self.outputs, torch.Tensor):
            return self.outputs.clone()
        return type(self.outputs)(*(t.clone() for t in self.outputs))
