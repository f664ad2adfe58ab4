"""Faster ``rerank`` for serving: the same lists, fewer kernel launches (seed article: KV cache and
embedding cache are in gref.model.decoding; this adds the graph-level levers).

A decoding call is dozens of small kernels per pass (m ~ 30 candidates, a few queries); at batch 1
their launch overhead, not arithmetic, is the cost. Modes, selectable per deployment
(``decode_mode`` of serve/app.py):
  * ``eager``       -- ``model.rerank`` as it is;
  * ``compile``     -- ``torch.compile`` of ``model.rerank`` (static shapes: one graph per input shape);
  * ``cuda_graphs`` -- the whole eager ``rerank`` captured once per padded input shape and replayed
                       (CUDA only). Batches are padded to a power of two and candidates to a
                       multiple of 8, so a few graphs serve any traffic; padded rows hold one
                       dummy candidate and are dropped from the answer.
Every mode returns exactly the eager lists (tests/unit/test_accel.py; benchmarks/gpu.py checks on GPU).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Literal, get_args

import torch
from torch import Tensor, nn

Mode = Literal["eager", "compile", "cuda_graphs"]
MODES: tuple[str, ...] = get_args(Mode)
Rerank = Callable[[Tensor, Tensor, Tensor, int], Tensor]


def bucketed(num: Tensor, cat: Tensor, cand_mask: Tensor, multiple: int = 8) -> tuple[Tensor, Tensor, Tensor]:
    """Inputs padded to a power-of-two batch and a multiple of ``multiple`` candidates (masked out);
    a padded request holds one dummy candidate, so no softmax runs over padding alone."""
    B, M = cand_mask.shape
    Bp, Mp = 1 << (B - 1).bit_length(), -(-M // multiple) * multiple
    num = nn.functional.pad(num, (0, 0, 0, Mp - M, 0, Bp - B))
    cat = nn.functional.pad(cat, (0, 0, 0, Mp - M, 0, Bp - B))
    mask = nn.functional.pad(cand_mask, (0, Mp - M, 0, Bp - B))
    mask[B:, 0] = True
    return num, cat, mask


class GraphedRerank:
    """``model.rerank`` replayed from CUDA graphs, one per (batch bucket, candidate bucket, n);
    at most ``max_graphs`` kept (least recently used evicted)."""

    def __init__(self, model: nn.Module, max_graphs: int = 32, candidate_multiple: int = 8):
        self.model, self.max_graphs, self.multiple = model, max_graphs, candidate_multiple
        self.graphs: OrderedDict[tuple, tuple] = OrderedDict()

    def _capture(self, key: tuple, num: Tensor, cat: Tensor, mask: Tensor, n: int):
        static = (num.clone(), cat.clone(), mask.clone())
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.no_grad():  # warm-up: lazy inits stay out of the graph
            for _ in range(2):
                self.model.rerank(*static, n)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.no_grad():
            out = self.model.rerank(*static, n)
        self.graphs[key] = (graph, static, out)
        if len(self.graphs) > self.max_graphs:
            self.graphs.popitem(last=False)

    @torch.no_grad()
    def __call__(self, num: Tensor, cat: Tensor, cand_mask: Tensor, n: int) -> Tensor:
        B = cand_mask.shape[0]
        num, cat, mask = bucketed(num, cat, cand_mask, self.multiple)
        key = (*mask.shape, n, num.dtype, cat.dtype)
        if key not in self.graphs:
            self._capture(key, num, cat, mask, n)
        graph, static, out = self.graphs[key]
        self.graphs.move_to_end(key)
        for dst, src in zip(static, (num, cat, mask)):
            dst.copy_(src)
        graph.replay()
        return out[:B].clone()


def accelerated_rerank(model: nn.Module, mode: str = "eager") -> Rerank:
    """A function with ``model.rerank``'s signature and results, run in ``mode`` (see MODES)."""
    if mode == "eager":
        return model.rerank
    if mode == "compile":
        return torch.compile(model.rerank, dynamic=False)
    if mode == "cuda_graphs":
        if not torch.cuda.is_available() or next(model.parameters()).device.type != "cuda":
            raise ValueError("decode_mode cuda_graphs needs the model on a CUDA device")
        return GraphedRerank(model)
    raise ValueError(f"unknown decode mode '{mode}' (one of {', '.join(MODES)})")
