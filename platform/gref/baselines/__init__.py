"""The baseline rerankers of paper Table 1 and the generator-evaluator, in the platform's
ranker interface (``forward(batch)`` losses, ``rerank``, ``item_scores``); see each module's
docstring for what it keeps of its paper and what it simplifies."""

from __future__ import annotations

from gref.baselines.clickmodel import ListClickModel
from gref.baselines.common import BaselineReranker
from gref.baselines.config import KINDS, PAPER_KINDS, BaselineConfig
from gref.baselines.gen_eval import GeneratorEvaluator
from gref.baselines.nar4rec import NAR4Rec
from gref.baselines.pointwise import DCN, DNN
from gref.baselines.prm import PRM
from gref.baselines.seq2slate import Seq2Slate

MODELS: dict[str, type[BaselineReranker]] = {
    "dnn": DNN, "dcn": DCN, "prm": PRM, "seq2slate": Seq2Slate, "nar4rec": NAR4Rec, "gen_eval": GeneratorEvaluator,
    "clickmodel": ListClickModel,
}
assert set(MODELS) == set(KINDS)
LABELS = {"dnn": "DNN", "dcn": "DCN", "prm": "PRM", "seq2slate": "Seq2Slate", "nar4rec": "NAR4Rec",
          "gen_eval": "generator-evaluator", "clickmodel": "list click model + beam search"}  # row names in reports


def build_baseline(cfg: BaselineConfig) -> BaselineReranker:
    return MODELS[cfg.kind](cfg)


__all__ = ["KINDS", "LABELS", "PAPER_KINDS", "MODELS", "BaselineConfig", "BaselineReranker", "build_baseline"]
