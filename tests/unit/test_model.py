"""Gen-Reranker and its decoding: structural properties checked against naive references."""

import pytest
import torch

from gref.losses import sequence_log_prob
from gref.model import GenReranker, ModelConfig, beam_search, decode, score_items


def make(k=4, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = ModelConfig(num_features=3, cat_sizes=[6, 5], d_model=32, n_heads=4, enc_layers=2,
                      dec_layers=2, omtp_heads=k, **kw)
    return GenReranker(cfg).eval()


def inputs(B=5, M=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    num = torch.randn(B, M, 3, generator=g)
    cat = torch.randint(1, 5, (B, M, 2), generator=g)
    mask = torch.ones(B, M, dtype=torch.bool)
    mask[1 % B, 9:] = False  # variable m: request 1 has 9 candidates
    mask[3 % B, 6:] = False
    return num, cat, mask


def naive_decode(model, num, cat, mask, n, heads):
    """Reference: every placement re-runs the full teacher-forced forward on the items placed so
    far (the pass's start t fixes the decoder state; head j reads the prefix y_<t+j)."""
    B, M = mask.shape
    placed = torch.zeros(B, 0, dtype=torch.long)
    blocked = ~mask.clone()
    while placed.shape[1] < n:
        t = placed.shape[1]
        for j in range(min(heads, n - t)):
            seq = torch.cat([placed, torch.zeros(B, 1, dtype=torch.long)], 1)  # last slot: any index
            logits = model(num, cat, mask, seq[:, None])[:, 0, j, t]  # head j at step t, [B, M]
            choice = logits.masked_fill(blocked, float("-inf")).argmax(-1)
            blocked[torch.arange(B), choice] = True
            placed = torch.cat([placed, choice[:, None]], 1)
    return placed


def with_list_bias(seed=0, k=4):
    """A model whose list-context terms are non-zero (they start at 0)."""
    model = make(k=k, seed=seed, list_bias=True)
    with torch.no_grad():
        model.list_bias.weight.copy_(torch.tensor([[-0.7, 0.4], [1.1, -0.9]]))
    return model


def with_value_pairs(seed=0, k=4):
    """A model whose list-context terms include non-zero effects between attribute values."""
    model = make(k=k, seed=seed, list_bias=True, value_pairs=3)
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        model.list_bias.weight.copy_(torch.tensor([[-0.7, 0.4], [1.1, -0.9]]))
        for table in (model.list_bias.pair_redundancy, model.list_bias.pair_adjacency):
            for emb in table.below:
                emb.weight[1:] = torch.randn(emb.weight[1:].shape, generator=g)
    return model


@pytest.mark.parametrize("heads", [1, 2, 4])
@pytest.mark.parametrize("factory", [make, with_list_bias, with_value_pairs])
def test_decoding_matches_the_teacher_forced_model(heads, factory):
    model = factory()
    num, cat, mask = inputs()
    got = decode(model, num, cat, mask, 6, heads=heads)
    ref = naive_decode(model, num, cat, mask, 6, heads)
    assert torch.equal(got, ref)


@pytest.mark.parametrize("heads", [1, 3, 4])
@pytest.mark.parametrize("factory", [make, with_list_bias, with_value_pairs])
def test_kv_cache_equals_no_cache(heads, factory):
    model = factory()
    num, cat, mask = inputs()
    assert torch.equal(decode(model, num, cat, mask, 8, heads=heads, use_cache=True),
                       decode(model, num, cat, mask, 8, heads=heads, use_cache=False))


def test_k1_omtp_equals_plain_greedy():
    """A k=4 model decoding with 1 head per pass is exactly next-item greedy decoding."""
    model = make()
    num, cat, mask = inputs()
    assert torch.equal(decode(model, num, cat, mask, 5, heads=1), naive_decode(model, num, cat, mask, 5, heads=1))


def test_output_is_a_duplicate_free_prefix_of_the_candidates():
    model = make(k=4)
    num, cat, mask = inputs(B=16, M=10, seed=3)
    out = decode(model, num, cat, mask, 10)
    for b in range(16):
        items = [i for i in out[b].tolist() if i >= 0]
        assert len(items) == len(set(items)) == min(10, int(mask[b].sum()))
        assert all(mask[b, i] for i in items)
        assert all(i == -1 for i in out[b].tolist()[len(items):])  # -1 only after the real items


def test_causal_mask_later_inputs_do_not_change_earlier_logits():
    model = make()
    num, cat, mask = inputs()
    seq = torch.tensor([[0, 1, 2, 3, 4]] * 5)
    changed = seq.clone()
    changed[:, 3] = 5  # the item placed at step 3 (decoder input of step 4)
    a = model(num, cat, mask, seq[:, None])[:, 0]
    b = model(num, cat, mask, changed[:, None])[:, 0]
    assert torch.allclose(a[:, :, :4], b[:, :, :4], atol=1e-5)
    assert not torch.allclose(a[:, :, 4], b[:, :, 4])


def test_padding_candidates_do_not_change_real_ones():
    model = make()
    num, cat, mask = inputs(B=1, M=6)
    num2 = torch.cat([num, torch.randn(1, 4, 3)], 1)
    cat2 = torch.cat([cat, torch.randint(1, 5, (1, 4, 2))], 1)
    mask2 = torch.cat([mask, torch.zeros(1, 4, dtype=torch.bool)], 1)
    z1 = model.encode(num, cat, mask)
    z2 = model.encode(num2, cat2, mask2)[:, :6]
    assert torch.allclose(z1, z2, atol=1e-5)
    assert torch.equal(decode(model, num, cat, mask, 4), decode(model, num2, cat2, mask2, 4))


def test_one_forward_scores_many_orderings():
    model = make()
    num, cat, mask = inputs(B=2)
    seqs = torch.tensor([[[0, 1, 2], [2, 1, 0]], [[3, 4, 5], [5, 3, 4]]])
    both = model(num, cat, mask, seqs)
    for s in range(2):
        assert torch.allclose(both[:, s], model(num, cat, mask, seqs[:, s:s + 1])[:, 0], atol=1e-5)


def test_beam_search():
    model = make(k=1)
    num, cat, mask = inputs(B=4, M=8)
    greedy = decode(model, num, cat, mask, 5)
    assert torch.equal(beam_search(model, num, cat, mask, 5, beam=1), greedy)
    beamed = beam_search(model, num, cat, mask, 5, beam=4)
    lengths = torch.full((4,), 5)

    def logp(seq):
        return sequence_log_prob(model(num, cat, mask, seq[:, None])[:, 0], seq, lengths, heads=1)

    assert (logp(beamed) >= logp(greedy) - 1e-5).all()
    for row in beamed.tolist():
        assert len(set(row)) == 5


def test_score_items_orders_placed_before_unplaced():
    model = make()
    num, cat, mask = inputs()
    placed = decode(model, num, cat, mask, 4)
    scores = score_items(model, num, cat, mask, placed)
    for b in range(placed.shape[0]):
        ranked = scores[b].argsort(descending=True)[:4].tolist()
        assert ranked == placed[b].tolist()
        assert torch.isinf(scores[b][~mask[b]]).all()


def test_rejects_too_long_lists():
    model = make(max_length=8)
    num, cat, mask = inputs()
    with pytest.raises(ValueError, match="max_length"):
        decode(model, num, cat, mask, 9)


def test_list_bias_by_hand():
    from gref.model.list_bias import ListBias

    bias = ListBias([4, 7])
    with torch.no_grad():
        bias.weight.copy_(torch.tensor([[-0.5, 0.2], [1.0, 3.0]]))  # rows: redundancy, adjacency
    # 4 candidates; column 0 values 2, 2, 3, 2; column 1 values 5, 6, 6, 1 (1 = OOV: equals nothing)
    cat = torch.tensor([[[2, 5], [2, 6], [3, 6], [2, 1]]])
    seq = torch.tensor([[0, 2, 1]])  # shown: cand 0, then 2, then 1
    got = bias.teacher_forced(cat, seq)[0]  # [N=3, M=4]
    # q = 0: no prefix
    assert got[0].tolist() == [0.0] * 4
    # q = 1: prefix (0). redundancy: col0 same as cand 0 -> cands 0, 1, 3 (-0.5); col1 same -> cand 0 (+0.2)
    #        adjacency to cand 0: col0 -> 0, 1, 3 (+1.0); col1 -> cand 0 (+3.0)
    assert got[1].tolist() == pytest.approx([-0.5 + 0.2 + 1.0 + 3.0, -0.5 + 1.0, 0.0, -0.5 + 1.0])
    # q = 2: prefix (0, 2). redundancy from 0 as above, from 2: col0 -> cand 2 (-0.5), col1 -> cands 1, 2 (+0.2)
    #        adjacency to cand 2: col0 -> cand 2 (+1.0), col1 -> cands 1, 2 (+3.0)
    assert got[2].tolist() == pytest.approx([-0.5 + 0.2, -0.5 + 0.2 + 3.0, -0.5 + 0.2 + 1.0 + 3.0, -0.5])


def test_list_bias_value_pairs_by_hand():
    """Value-pair tables add <U[a], V[b]> per column: per earlier item (redundancy) and for the item
    right above (adjacency), on top of the equality terms; a fresh table adds nothing."""
    from gref.model.list_bias import ListBias

    bias = ListBias([4, 3], value_pairs=1)
    cat = torch.tensor([[[2, 1], [3, 1], [2, 2]]])  # candidates 0 and 2 share column 0
    seq = torch.tensor([[0, 1]])
    assert torch.count_nonzero(bias.teacher_forced(cat, seq)) == 0
    with torch.no_grad():
        bias.weight.copy_(torch.tensor([[-0.5, 0.0], [1.0, 0.0]]))
        bias.pair_redundancy.above[0].weight[2:4, 0] = torch.tensor([1.0, 2.0])  # U[2] = 1, U[3] = 2
        bias.pair_redundancy.below[0].weight[2:4, 0] = torch.tensor([0.1, 0.3])  # V[2] = 0.1, V[3] = 0.3
        bias.pair_adjacency.above[1].weight[1:3, 0] = torch.tensor([1.0, 0.0])  # column 1: U[1] = 1
        bias.pair_adjacency.below[1].weight[1:3, 0] = torch.tensor([0.5, -2.0])  # V[1] = 0.5, V[2] = -2
    got = bias.teacher_forced(cat, seq)[0]  # [N=2, M=3]
    assert got[0].tolist() == [0.0] * 3
    # q = 1 after candidate 0 (values 2, 1): equality -0.5 + 1.0 on candidates 0 and 2 (column 0);
    # redundancy table U0[2] V0[b]: 0.1, 0.3, 0.1; adjacency table U1[1] V1[b]: 0.5, 0.5, -2
    assert got[1].tolist() == pytest.approx([0.5 + 0.1 + 0.5, 0.3 + 0.5, 0.5 + 0.1 - 2.0])


def test_value_pairs_need_the_list_context_terms():
    from gref.config import ConfigError

    with pytest.raises(ConfigError, match="list_bias"):
        ModelConfig(value_pairs=2)
    with pytest.raises(ConfigError, match="list_bias"):
        make().with_value_pairs(2)


def test_grown_value_pair_tables_keep_the_model_and_can_learn():
    """A model given value-pair tables computes the same logits and lists as before (their V is 0),
    and a loss reaches the new tables' V (their U is not 0), so post-training can move them."""
    model = with_list_bias()
    grown = model.with_value_pairs(3)
    assert grown.cfg.value_pairs == 3 and not grown.training
    num, cat, mask = inputs()
    seq = decode(model, num, cat, mask, 6)  # every request has >= 6 candidates: no -1 in the lists
    assert torch.equal(grown(num, cat, mask, seq[:, None]), model(num, cat, mask, seq[:, None]))
    assert torch.equal(decode(grown, num, cat, mask, 6), seq)
    logits = grown(num, cat, mask, seq[:, None])
    logits[torch.isfinite(logits)].sum().backward()
    assert all(emb.weight.grad.abs().sum() > 0 for emb in grown.list_bias.pair_redundancy.below)


def test_beam_search_with_list_bias_is_greedy_at_width_1():
    model = with_list_bias(k=1)
    num, cat, mask = inputs(B=4, M=8)
    assert torch.equal(beam_search(model, num, cat, mask, 5, beam=1), decode(model, num, cat, mask, 5))
