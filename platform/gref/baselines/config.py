"""Hyper-parameters of the baseline rerankers (paper Table 1 peers and the generator-evaluator).

One dataclass for every kind, so a baseline is a YAML file with ``kind:`` and the knobs it
reads; the fields a kind ignores are listed beside each knob.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from gref.config import ConfigError

KINDS = ("dnn", "dcn", "prm", "seq2slate", "nar4rec", "gen_eval", "clickmodel")
PAPER_KINDS = KINDS[:-1]  # the paper's comparisons (``baselines=[all]``); clickmodel is GReF's reward (jobs.reward)


@dataclass
class BaselineConfig:
    kind: Literal["dnn", "dcn", "prm", "seq2slate", "nar4rec", "gen_eval", "clickmodel"] = "nar4rec"  # dnn | dcn | prm | seq2slate | nar4rec | gen_eval | clickmodel
    num_features: int = 11  # F (filled in from the prepared data)
    cat_sizes: list[int] = field(default_factory=list)  # embedding rows per categorical column (from the data)
    max_candidates: int = 200  # size of the upstream-rank embedding
    max_length: int = 32  # longest list a model places (NAR4Rec: number of position queries)
    d_model: int = 64  # embedding / transformer width
    n_heads: int = 4  # attention heads (prm, seq2slate, nar4rec, gen_eval)
    layers: int = 2  # transformer layers per encoder (prm, seq2slate, nar4rec, gen_eval)
    emb_dim: int = 16  # per-field embedding size of the concatenated input (dnn, dcn)
    hidden: list[int] = field(default_factory=lambda: [128, 64])  # MLP widths (dnn, dcn deep part)
    cross_layers: int = 3  # DCN-V2 cross layers (dcn)
    dropout: float = 0.0
    positive_quantile: float = 0.5  # nar4rec: lists above this quantile of U(Y) in the batch are positives
    contrastive_alpha: float = 0.3  # nar4rec: weight of the similarity penalty in contrastive decoding
    contrastive_topk: int = 3  # nar4rec: candidates (most probable at the position) the penalty chooses among
    num_lists: int = 16  # gen_eval: lists the generator proposes per request (1 greedy + samples)
    temperature: float = 1.0  # gen_eval: Plackett-Luce sampling temperature of the generator
    beam_width: int = 4  # clickmodel: beam of its list search (1 = greedy)
    context_members: int = 0  # clickmodel: networks in the neural list-context ensemble (0 = the structured model alone)
    pessimism: float = 1.0  # clickmodel: the list value searched is mean - pessimism * std over those members
    context_pairs: bool = False  # clickmodel: the context adds one learned term per (candidate, item above) pair
    context_prefix: bool = False  # clickmodel: the context reads the items above each in the light of those above it
    value_pairs: int = 0  # clickmodel: rank of learned effects between attribute values of two items (0 = equality only)
    page_coverage: bool = False  # clickmodel: reading on depends on how well the page so far covers each attribute's values
    coverage_intents: bool = False  # clickmodel, with page_coverage: a value counts once, at its intent weight (softmax of its best appeal)
    anchor: dict = field(default_factory=dict)  # clickmodel: ModelConfig of the pre-trained GReF whose first-step
    #                                             logits, scaled, are a(i) (frozen; jobs.reward); {} = a DCN

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"unknown baseline kind '{self.kind}' (one of {', '.join(KINDS)})")
        if self.coverage_intents and not self.page_coverage:
            raise ConfigError("coverage_intents weighs the page's coverage: it needs page_coverage=true")
