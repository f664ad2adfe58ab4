"""Each GReF loss against a hand computation on tiny tensors (no Ray)."""

import math

import pytest
import torch
import torch.nn.functional as F

from gref.losses import (
    OMTPLoss,
    RerankDPOLoss,
    multi_token_loss,
    ordered_loss,
    permutations,
    sequence_log_prob,
    target_log_probs,
)


def lsm(values, allowed):
    """log-softmax of values[i] over the allowed indices, by hand."""
    z = math.log(sum(math.exp(values[j]) for j in allowed))
    return {i: values[i] - z for i in allowed}


# B=1, k=2 heads, N=3 steps, M=3 candidates
L0 = [[0.5, 1.0, 2.0], [0.1, 0.3, -0.2], [1.5, -1.0, 0.0]]  # head 0 logits at t = 0, 1, 2
L1 = [[0.2, -0.4, 0.9], [1.1, 0.0, 0.3], [0.0, 0.0, 0.0]]  # head 1
LOGITS = torch.tensor([[L0, L1]])  # [1, 2, 3, 3]
SEQ = torch.tensor([[2, 0, 1]])


def test_multi_token_loss_by_hand():
    # head 0 at t predicts y_t, excluding y_<t; head 1 at t predicts y_{t+1}, excluding y_<t+1
    h0 = lsm(L0[0], [0, 1, 2])[2] + lsm(L0[1], [0, 1])[0] + lsm(L0[2], [1])[1]
    h1 = lsm(L1[0], [0, 1])[0] + lsm(L1[1], [1])[1]  # t=2 has no y_3
    got = multi_token_loss(LOGITS, SEQ, torch.tensor([3]))
    assert got.item() == pytest.approx(-(h0 + h1), abs=1e-5)


def test_k1_is_the_autoregressive_loss():
    h0 = lsm(L0[0], [0, 1, 2])[2] + lsm(L0[1], [0, 1])[0] + lsm(L0[2], [1])[1]
    got = multi_token_loss(LOGITS[:, :1], SEQ, torch.tensor([3]))
    assert got.item() == pytest.approx(-h0, abs=1e-5)


def test_shorter_lists_are_masked():
    h0 = lsm(L0[0], [0, 1, 2])[2] + lsm(L0[1], [0, 1])[0]
    h1 = lsm(L1[0], [0, 1])[0]
    got = multi_token_loss(LOGITS, SEQ, torch.tensor([2]))
    assert got.item() == pytest.approx(-(h0 + h1), abs=1e-5)


def test_sequence_log_prob_follows_the_decoding_passes():
    # 2 heads per pass, N=3: pass at t0=0 places y0 (head 0), y1 (head 1); pass at t0=2 places y2 (head 0)
    expect = lsm(L0[0], [0, 1, 2])[2] + lsm(L1[0], [0, 1])[0] + lsm(L0[2], [1])[1]
    got = sequence_log_prob(LOGITS, SEQ, torch.tensor([3]), heads=2)
    assert got.item() == pytest.approx(expect, abs=1e-5)
    ar = lsm(L0[0], [0, 1, 2])[2] + lsm(L0[1], [0, 1])[0] + lsm(L0[2], [1])[1]
    assert sequence_log_prob(LOGITS, SEQ, torch.tensor([3]), heads=1).item() == pytest.approx(ar, abs=1e-5)


def test_ordered_loss_by_hand():
    # k=2, N=2, M=3: one window (y0=0, y1=1); only y1 was clicked.
    a = [0.3, -0.2, 0.4]  # head 0 at t=0
    b = [0.7, 0.1, -0.5]  # head 1 at t=0
    logits = torch.tensor([[[a, [0.0] * 3], [b, [0.0] * 3]]])  # [1, 2, 2, 3]
    seq, rel = torch.tensor([[0, 1]]), torch.tensor([[0.0, 1.0]])
    # NDCG(identity (0,1)) = (1/log2 3) / 1 < NDCG(swap (1,0)) = 1  -> pair (swap > identity)
    p_swap = lsm(a, [0, 1, 2])[1] + lsm(b, [0, 2])[0]
    p_id = lsm(a, [0, 1, 2])[0] + lsm(b, [1, 2])[1]
    expect = -math.log(1 / (1 + math.exp(-(p_swap - p_id))))
    got = ordered_loss(logits, seq, torch.tensor([2]), rel, permutations(2))
    assert got.item() == pytest.approx(expect, abs=1e-5)
    # no feedback -> every permutation scores 0 -> no pair -> no loss
    assert ordered_loss(logits, seq, torch.tensor([2]), torch.zeros(1, 2), permutations(2)).item() == 0.0


def test_omtp_combines_with_lambdas():
    rel = torch.tensor([[1.0, 0.0, 1.0]])
    lengths = torch.tensor([3])
    l_n = multi_token_loss(LOGITS, SEQ, lengths)
    l_o = ordered_loss(LOGITS, SEQ, lengths, rel, permutations(2))
    out = OMTPLoss(k=2, lambda1=0.5, lambda2=2.0)(LOGITS, SEQ, lengths, rel)
    assert out["loss"].item() == pytest.approx(0.5 * l_n.item() + 2.0 * l_o.item(), abs=1e-5)
    assert l_o.item() > 0


def test_permutations():
    assert permutations(3).tolist()[0] == [0, 1, 2] and len(permutations(3)) == 6
    big = permutations(6, max_perms=50)
    assert len(big) <= 50 and big.tolist()[0] == list(range(6))


ONE = torch.tensor([4])  # list length n


def test_dpo_loss_by_hand():
    beta = 0.1
    out = RerankDPOLoss(beta)(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5]), torch.tensor([-1.0]), ONE)
    margin = beta * ((-1.0 + 1.5) - (-2.0 + 1.0))
    assert out["loss"].item() == pytest.approx(math.log(1 + math.exp(-margin)), abs=1e-6)
    assert out["accuracy"].item() == 1.0
    assert out["chosen_reward"].item() == pytest.approx(beta * 0.5) and out["rejected_reward"].item() == pytest.approx(-beta)
    assert out["chosen_logp"].item() == pytest.approx(-1.0 / 4)


def test_dpo_at_reference_is_log2_and_has_zero_gradient_as_beta_goes_to_0():
    w = torch.tensor([-3.0], requires_grad=True)
    out = RerankDPOLoss(1e-8)(w, torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.0]), ONE)
    out["loss"].backward()
    assert out["loss"].item() == pytest.approx(math.log(2), abs=1e-6)
    assert abs(w.grad.item()) < 1e-8


def test_conservative_dpo_label_smoothing_by_hand():
    beta, eps = 0.5, 0.2
    h = (-1.0 + 1.5) - (-2.0 + 1.0)  # 1.5
    out = RerankDPOLoss(beta, label_smoothing=eps)(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5]),
                                                    torch.tensor([-1.0]), ONE)
    ls = lambda x: math.log(1 / (1 + math.exp(-x)))  # noqa: E731
    assert out["loss"].item() == pytest.approx(-(1 - eps) * ls(beta * h) - eps * ls(-beta * h), abs=1e-6)


def test_ipo_by_hand_and_its_minimum_at_the_target_margin():
    beta = 0.25
    out = RerankDPOLoss(beta, loss_type="ipo")(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5]),
                                               torch.tensor([-1.0]), ONE)
    assert out["loss"].item() == pytest.approx((1.5 - 1 / (2 * beta)) ** 2, abs=1e-6)
    at_target = RerankDPOLoss(beta, loss_type="ipo")(torch.tensor([1.0]), torch.tensor([-1.0]), torch.tensor([0.0]),
                                                     torch.tensor([0.0]), ONE)  # h = 2 = 1 / (2 beta)
    assert at_target["loss"].item() == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="unknown DPO loss"):
        RerankDPOLoss(loss_type="kto")


def test_rpo_adds_the_winners_per_item_nll_and_length_norm_divides_by_n():
    beta, lam = 0.1, 0.5
    args = (torch.tensor([-8.0, -4.0]), torch.tensor([-10.0, -6.0]), torch.tensor([-9.0, -5.0]),
            torch.tensor([-9.0, -5.0]))
    lengths = torch.tensor([8, 2])
    plain = RerankDPOLoss(beta)(*args, lengths)
    rpo = RerankDPOLoss(beta, sft_weight=lam)(*args, lengths)
    nll = ((8.0 / 8) + (4.0 / 2)) / 2
    assert rpo["loss"].item() == pytest.approx(plain["loss"].item() + lam * nll, abs=1e-6)
    normed = RerankDPOLoss(beta, length_norm=True)(*args, lengths)
    h = torch.tensor([(1.0 + 1.0) / 8, (1.0 + 1.0) / 2])  # ((w - ref_w) - (l - ref_l)) / n
    assert normed["loss"].item() == pytest.approx(float(-F.logsigmoid(beta * h).mean()), abs=1e-6)


def test_target_log_probs_validity():
    _, valid = target_log_probs(LOGITS, SEQ, torch.tensor([3]))
    assert valid.tolist() == [[[True, True, True], [True, True, False]]]


def test_ordered_loss_on_a_batch_of_mixed_lengths_is_finite_and_per_request():
    # review defect: padded slots hold candidate 0, a window past n repeated it -> NaN loss and grads
    torch.manual_seed(0)
    B, k, N, M = 2, 2, 4, 6
    logits = torch.randn(B, k, N, M, requires_grad=True)
    seq = torch.tensor([[3, 1, 4, 0], [2, 5, 0, 0]])  # request 1 has n = 2: slots 2, 3 are padding (= 0)
    lengths = torch.tensor([4, 2])
    rel = torch.tensor([[0.0, 1.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0]])
    perms = permutations(k)
    both = ordered_loss(logits, seq, lengths, rel, perms)
    alone = [ordered_loss(logits[i:i + 1], seq[i:i + 1], lengths[i:i + 1], rel[i:i + 1], perms) for i in range(B)]
    assert torch.isfinite(both) and both.item() > 0
    assert both.item() == pytest.approx((alone[0].item() + alone[1].item()) / 2, abs=1e-5)
    both.backward()
    assert torch.isfinite(logits.grad).all()
    out = OMTPLoss(k)(logits.detach(), seq, lengths, rel)
    assert torch.isfinite(out["loss"])


def test_single_head_ordered_loss_is_plackett_luce_of_the_step_t_distribution():
    # k = 1, window 2, N = 2, M = 3: one window (y0=0, y1=1), only y1 clicked -> the swap beats identity
    a = [0.3, -0.2, 0.4]  # head 0 at t = 0 (its t = 1 logits play no part in the window at t = 0)
    logits = torch.tensor([[[a, [0.0] * 3]]])  # [1, 1, 2, 3]
    seq, rel = torch.tensor([[0, 1]]), torch.tensor([[0.0, 1.0]])
    p_swap = lsm(a, [0, 1, 2])[1] + lsm(a, [0, 2])[0]
    p_id = lsm(a, [0, 1, 2])[0] + lsm(a, [1, 2])[1]
    expect = -math.log(1 / (1 + math.exp(-(p_swap - p_id))))
    out = OMTPLoss(k=1, lambda1=0.0, lambda2=1.0, window=2)(logits, seq, torch.tensor([2]), rel)
    assert out["l_o"].item() == pytest.approx(expect, abs=1e-5)
    assert OMTPLoss(k=1)(logits, seq, torch.tensor([2]), rel)["l_o"].item() == 0.0  # a 1-item window has no order
