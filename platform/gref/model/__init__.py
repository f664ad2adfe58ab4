"""Gen-Reranker: model, decoding."""

from gref.model.config import ModelConfig
from gref.model.decoding import beam_search, decode, score_items
from gref.model.reranker import GenReranker

__all__ = ["GenReranker", "ModelConfig", "beam_search", "decode", "score_items"]
