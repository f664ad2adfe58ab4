"""The decode modes of gref.model.accel return exactly the eager lists (CPU here; benchmarks/gpu.py
checks CUDA graphs and torch.compile on a GPU)."""

from __future__ import annotations

import pytest
import torch

from gref.baselines import BaselineConfig, build_baseline
from gref.model import GenReranker, ModelConfig
from gref.model.accel import accelerated_rerank, bucketed


def models():
    torch.manual_seed(0)
    gref = GenReranker(ModelConfig(num_features=3, cat_sizes=[6, 5], d_model=16, n_heads=2, enc_layers=1,
                                   dec_layers=1, omtp_heads=4, list_bias=True)).eval()
    with torch.no_grad():
        gref.list_bias.weight.normal_()
    nar = build_baseline(BaselineConfig(kind="nar4rec", num_features=3, cat_sizes=[6, 5], d_model=16, n_heads=2,
                                        layers=1)).eval()
    return {"gref": gref, "nar4rec": nar}


def inputs(B=5, M=13, seed=1):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, M, dtype=torch.bool)
    mask[1, 9:] = False
    return torch.randn(B, M, 3, generator=g), torch.randint(1, 5, (B, M, 2), generator=g), mask


@pytest.mark.parametrize("name", ["gref", "nar4rec"])
def test_bucketed_inputs_give_the_same_lists(name):
    """The padding the CUDA-graph mode adds (batch to a power of two, candidates to a multiple of 8)
    changes no list."""
    model = models()[name]
    x = inputs()
    padded = bucketed(*x)
    assert padded[2].shape == (8, 16) and padded[2][5:, 0].all() and not padded[2][5:, 1:].any()
    assert torch.equal(model.rerank(*padded, 6)[:5], model.rerank(*x, 6))


def test_compiled_rerank_equals_eager():
    """torch.compile of GReF's OMTP decoding (one pass of 4 heads; compiling takes ~30 s on 2 cores)."""
    model = models()["gref"]
    x = inputs()
    compiled = accelerated_rerank(model, "compile")
    with torch.no_grad():
        assert torch.equal(compiled(*x, 4), model.rerank(*x, 4))
        y = inputs(seed=2)  # fresh inputs of the same shape: the compiled graph is reused
        assert torch.equal(compiled(*y, 4), model.rerank(*y, 4))


def test_modes_are_checked():
    model = models()["gref"]
    assert accelerated_rerank(model, "eager") == model.rerank
    with pytest.raises(ValueError, match="unknown decode mode"):
        accelerated_rerank(model, "onnx")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            accelerated_rerank(model, "cuda_graphs")
