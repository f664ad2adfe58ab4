"""The learned list-wise reward: a click model of whole lists trained on the logged exposures.

P(click at p | list) = e_p * q_p with the structured list effects of gref.clickmodel.structured:
  * e_p, examination by position, monotone: e_1 = 1, e_p = e_{p-1} * sigmoid(theta_p) (position
    bias factored out of the item's appeal, as in the position-based click model);
  * a(i), the item's click logit. Default (``anchor``): s * g(i) + b, where g(i) is a frozen
    pre-trained GReF's first-step logit -- what it learned about each candidate from the exposure
    orders of the whole log -- and only the scale s and bias b are fitted to clicks; without an
    anchor, a DCN-V2 over every feature + the upstream rank, fitted to clicks alone (it overfits
    them: docs/results.md, the reward-model ablation);
  * list effects through attribute equality on every categorical column c: redundancy (per earlier
    item sharing c), adjacency (item right above shares c), adjacency after a click -- a
    weight each per column, learned; nothing says which column matters.
  * optionally (``value_pairs`` = rank > 0) effects between *different* values of an attribute, per
    earlier item and for the item right above: low-rank tables per column (gref.model.value_pairs).
  * optionally (``page_coverage``) examination that depends on the page: the chance to move on to p
    moves with the appeal-weighted number of distinct values of each column shown above (a user
    with several intents reads on while the page serves them), a weight per column, learned; with
    ``coverage_intents`` each value shown counts once at its intent weight instead (the values of
    the request's most appealing candidates are what she came for);
  * optionally (``context_members`` > 0) a neural list context on top (gref.clickmodel.context):
    a bootstrap ensemble of small networks that read the items above each slot and correct its
    click probability -- the effects the structured form cannot express -- and the list value
    becomes pessimistic (mean - ``pessimism`` * std over members).
Trained by the Bernoulli likelihood of each logged click (the marginal P(click at p), exact for
the model), which identifies position bias because the same kind of item is shown at different
positions. ``value(lists)`` = expected clicks of any list of the request's candidates, which is
what post-training maximises (gref.train.onpolicy) and ``rerank`` searches (beam search), so the
reward model is also a reranker row of its own ("list click model + beam search").

It judges lists it never saw (the policy's), so gref.train.onpolicy audits it against the
oracle on simulated worlds (agreement of its best / worst pick among sampled lists).

Shapes: B requests, M candidates, N exposure slots, C categorical columns.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gref.baselines.common import BaselineReranker
from gref.baselines.config import BaselineConfig
from gref.baselines.pointwise import DCN
from gref.clickmodel.context import EPS, ListContext, bootstrap_weights, context_beam_search, weighted_bce
from gref.clickmodel.search import beam_search
from gref.clickmodel.structured import ListEffects, coverage_path, expected_clicks
from gref.data.batch import Batch, same_attribute
from gref.model.value_pairs import ValuePairs

COVERAGE_SCALE = 10.0


class PolicyAttractiveness(nn.Module):
    """a(i) = scale * (a frozen GenReranker's first-step logit of i) + bias. [B, M]"""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy.eval().requires_grad_(False)
        self.scale = nn.Parameter(torch.tensor(0.5))
        self.bias = nn.Parameter(torch.tensor(-1.5))

    def train(self, mode: bool = True):  # the anchor stays frozen in eval mode (no dropout)
        super().train(mode)
        self.policy.eval()
        return self

    def forward(self, num: Tensor, cat: Tensor, cand_mask: Tensor) -> Tensor:
        from gref.model.decoding import first_step_logits

        with torch.no_grad():
            first = first_step_logits(self.policy, num, cat, cand_mask)
        return self.scale * first + self.bias


class ListClickModel(BaselineReranker):
    def __init__(self, cfg: BaselineConfig, attractiveness: nn.Module | None = None):
        super().__init__(cfg)
        if attractiveness is None:
            if cfg.anchor:
                from gref.model.config import ModelConfig
                from gref.model.reranker import GenReranker

                attractiveness = PolicyAttractiveness(GenReranker(ModelConfig(**cfg.anchor)))
            else:
                attractiveness = DCN(cfg)
        self.attractiveness = attractiveness
        C = len(cfg.cat_sizes)
        self.redundancy = nn.Parameter(torch.zeros(C))
        self.adjacency = nn.Parameter(torch.zeros(C))
        self.click_adjacency = nn.Parameter(torch.zeros(C))
        # theta_1 is unused (e_1 = 1); sigmoid(2.2) ~ 0.9 per step to start
        self.continuation = nn.Parameter(torch.full((cfg.max_length,), 2.2))
        self.pair_redundancy = ValuePairs(cfg.cat_sizes, cfg.value_pairs) if cfg.value_pairs else None
        self.pair_adjacency = ValuePairs(cfg.cat_sizes, cfg.value_pairs) if cfg.value_pairs else None
        # examination moved by the page's coverage (gref.clickmodel.structured), 0: position-only; its
        # weights are COVERAGE_SCALE * these (a weak, slow direction of the likelihood: larger Adam steps)
        self.page_coverage = nn.Parameter(torch.zeros(C)) if cfg.page_coverage else None
        # coverage_intents: tau_c of the intent weights (gref.clickmodel.structured), 1 to start
        self.intent_scale = nn.Parameter(torch.ones(C)) if cfg.page_coverage and cfg.coverage_intents else None
        if cfg.page_coverage:  # the logged lists' mean coverage after p items, a running mean while training
            self.register_buffer("coverage_center", torch.zeros(cfg.max_length, C))
            self.register_buffer("coverage_updates", torch.zeros((), dtype=torch.long))
        # effects beyond the structured form, learned from the lists (gref.clickmodel.context)
        self.context = ListContext(cfg.num_features, cfg.cat_sizes, cfg.context_members, cfg.pessimism, cfg.max_length,
                                   pairs=cfg.context_pairs, prefix=cfg.context_prefix) if cfg.context_members else None

    def item_logits(self, num: Tensor, cat: Tensor, cand_mask: Tensor) -> Tensor:
        """a(i) [B, M]."""
        if isinstance(self.attractiveness, DCN):
            return self.attractiveness.logits(num, cat, cand_mask)
        return self.attractiveness(num, cat, cand_mask)

    def examination(self) -> Tensor:
        """e_p [max_length], e_1 = 1, non-increasing."""
        step = torch.sigmoid(self.continuation).clone()
        step = torch.cat([step.new_ones(1), step[1:]])
        return torch.cumprod(step, 0)

    def effects(self, num: Tensor, cat: Tensor, cand_mask: Tensor) -> ListEffects:
        return ListEffects(logit=self.item_logits(num, cat, cand_mask),
                           same=same_attribute(cat),
                           redundancy=self.redundancy, adjacency=self.adjacency,
                           click_adjacency=self.click_adjacency, examination=self.examination(),
                           cand_mask=cand_mask,
                           pair_redundancy=self.pair_redundancy(cat) if self.pair_redundancy is not None else None,
                           pair_adjacency=self.pair_adjacency(cat) if self.pair_adjacency is not None else None,
                           continuation=self.continuation if self.page_coverage is not None else None,
                           coverage=None if self.page_coverage is None else COVERAGE_SCALE * self.page_coverage,
                           coverage_center=self.coverage_center if self.page_coverage is not None else None,
                           intent_scale=self.intent_scale)

    @torch.no_grad()
    def _follow_coverage(self, fx: ListEffects, lists: Tensor) -> None:
        """Move ``coverage_center`` (in place: ``fx`` holds it) towards the mean coverage of these
        logged lists [B, L] after each number of items (momentum 0.1; the first batch sets it)."""
        path = coverage_path(fx, lists)  # [B, L, C]
        L = min(lists.shape[1], self.coverage_center.shape[0])
        shown = (lists[:, 1:L] >= 0).float()[..., None]  # the item after p items exists: its slot reads the centre
        mean = (path[:, : L - 1] * shown).sum(0) / shown.sum(0).clamp_min(1)  # [L-1, C]
        rate = 1.0 if self.coverage_updates.item() == 0 else 0.1
        seen = shown.sum(0) > 0
        self.coverage_center[1:L] = torch.where(seen, self.coverage_center[1:L] + rate * (mean - self.coverage_center[1:L]),
                                                self.coverage_center[1:L])
        self.coverage_updates += 1

    def marginals(self, num: Tensor, cat: Tensor, cand_mask: Tensor, lists: Tensor,
                  fx: ListEffects | None = None) -> Tensor:
        """P(click at p) of lists [B, L] (-1 = none): [1, B, L] for the structured model alone,
        [K, B, L] with a context ensemble (one row per member). ``fx``: these requests' effects
        when the caller has them already."""
        fx = self.effects(num, cat, cand_mask) if fx is None else fx
        p_click = expected_clicks(fx, lists)[1]
        if self.context is None:
            return p_click[None]
        return self.context.marginals(num, cat, fx.logit, p_click, lists)

    @torch.no_grad()
    def list_values(self, num: Tensor, cat: Tensor, cand_mask: Tensor, lists: Tensor) -> Tensor:
        """The value of lists [B, G, n] (-1 = none) -> [B, G]: expected clicks; with a context
        ensemble its pessimistic value (members' mean - pessimism * std), what ``search`` maximises."""
        B, G, n = lists.shape
        rep = lambda x: x.repeat_interleave(G, 0)  # noqa: E731
        per_member = self.marginals(rep(num), rep(cat), rep(cand_mask), lists.reshape(B * G, n)).sum(-1)
        value = per_member[0] if self.context is None else self.context.pessimistic(per_member)
        return value.view(B, G)

    @torch.no_grad()
    def search(self, num: Tensor, cat: Tensor, cand_mask: Tensor, n: int, width: int | None = None) -> Tensor:
        """The best list [B, n] of the model by beam search (-1 past a request's m)."""
        width = width or self.cfg.beam_width
        fx = self.effects(num, cat, cand_mask)
        if self.context is None:
            return beam_search(fx, n, width)[0]
        tokens = [net.tokens(num, cat, fx.logit) for net in self.context.nets]
        return context_beam_search(fx, self.context, tokens, n, width)

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """Bernoulli log-likelihood of the logged clicks at the exposed slots (with a context
        ensemble: each member's, its requests weighted by their bootstrap draws while training)."""
        N = batch.exposure.shape[1]
        valid = torch.arange(N, device=batch.num.device)[None] < batch.lengths[:, None]
        lists = torch.where(valid, batch.exposure, -1)
        fx = self.effects(batch.num, batch.cat, batch.cand_mask)
        if self.page_coverage is not None and self.training:
            self._follow_coverage(fx, lists)
        p = self.marginals(batch.num, batch.cat, batch.cand_mask, lists, fx)  # [K, B, N]
        if self.context is not None and self.training:
            weights = bootstrap_weights(batch.request_id, p.shape[0], p.shape[1], p.device)
        else:
            weights = torch.ones(p.shape[:2], device=p.device)
        loss = weighted_bce(p, batch.click, valid.float(), weights)
        with torch.no_grad():
            mean_nll = weighted_bce(p.mean(0, keepdim=True), batch.click, valid.float(), torch.ones_like(weights[:1]))
        return {"loss": loss, "click_nll": mean_nll}

    @torch.no_grad()
    def request_nll(self, batch: Batch) -> Tensor:
        """[B] each request's Bernoulli NLL of its logged clicks, summed over its exposed slots
        (a context ensemble's members averaged, as in the validation loss): the unit of a paired
        comparison of two rewards on the same requests (gref.recipe.preferred_reward)."""
        N = batch.exposure.shape[1]
        valid = torch.arange(N, device=batch.num.device)[None] < batch.lengths[:, None]
        p = self.marginals(batch.num, batch.cat, batch.cand_mask, torch.where(valid, batch.exposure, -1))  # [K, B, N]
        nll = F.binary_cross_entropy(p.clamp(EPS, 1 - EPS), batch.click.expand_as(p), reduction="none") * valid
        return nll.sum(-1).mean(0)

    @torch.no_grad()
    def rerank(self, num: Tensor, cat: Tensor, cand_mask: Tensor, n: int) -> Tensor:
        return self.search(num, cat, cand_mask, n)

    @torch.no_grad()
    def item_scores(self, num: Tensor, cat: Tensor, cand_mask: Tensor, placed: Tensor) -> Tensor:
        from gref.model.decoding import list_scores

        logits = self.item_logits(num, cat, cand_mask)
        return list_scores(placed, logits.masked_fill(~cand_mask, 0.0), cand_mask)
