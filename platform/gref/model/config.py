"""Gen-Reranker hyper-parameters (paper §4.1, §4.4)."""

from __future__ import annotations

from dataclasses import dataclass, field

from gref.config import ConfigError


@dataclass
class ModelConfig:
    num_features: int = 11  # F: numeric columns per candidate row (item + user + context)
    cat_sizes: list[int] = field(default_factory=list)  # embedding rows per categorical column
    max_candidates: int = 200  # m_max: size of the upstream-rank position embedding
    max_length: int = 32  # n_max: longest list the decoder can place
    d_model: int = 64  # width (paper: not stated; 64 keeps the laptop default fast)
    n_heads: int = 4  # attention heads
    enc_layers: int = 2  # bidirectional encoder layers (paper: 4)
    dec_layers: int = 2  # causal decoder layers (paper: 4)
    ffn_mult: int = 4  # feed-forward width = ffn_mult * d_model
    dropout: float = 0.0  # dropout inside every layer; costs ~35% of a CPU step (random numbers are slow there)
    input_dropout: float = 0.0  # dropout on the encoder's candidate inputs and the decoder's inputs only (cheap)
    omtp_heads: int = 4  # k: OMTP output heads; 1 = plain next-item model (paper: 4 = a screen)
    list_bias: bool = False  # add learned list-context terms to Eq. 5's logits (list_bias.ListBias); paper: off
    value_pairs: int = 0  # with list_bias: rank of its learned effects between attribute values (0 = equality only)

    def __post_init__(self):
        if self.value_pairs and not self.list_bias:
            raise ConfigError("model.value_pairs adds to the list-context terms: it needs model.list_bias=true")
