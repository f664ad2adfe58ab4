"""Off-policy estimates of any ranker's clicks from explored traffic (no Ray, no oracle).

The endpoint serves a share of its requests a list *sampled* from the GReF model (``explore``,
gref.serving.inference); the export marks them ``explored``. Every other ranker's expected clicks
can then be estimated from those requests alone, by reweighting the clicks they got. A whole
10-item list almost never equals another policy's list, so the weights match parts of it, in one
of two forms (``FORMS``). For a deterministic target list ``t`` and a logged list ``a``:

  cascade   w_k = 1[a_1..a_k = t_1..t_k] / (p_1 ... p_k),   p_j = P(a_j | a_1..a_{j-1})
            (``prefix_weights``; ``logging_propensities`` recomputes the p_j by teacher forcing).
            Unbiased if a click on slot k depends on the request and the items of slots 1..k
            only (Kiyohara et al., WSDM 2022; McInerney et al., KDD 2020); a deterministic list's
            10-slot prefix almost never matches a sample, so the deep slots go unseen.
  item      w_k = 1[a_k = t_k] / P(a_k on slot k)   (``item_position_weights``; the marginal from
            ``item_position_marginals``). Unbiased if a click depends on (request, item, slot)
            alone (Li et al., WSDM 2018): far less variance, a bias wherever the neighbours matter.

Per request, with clicks ``c_k`` and a click model's P(click on slot k) ``q`` of a list:

    IPS    sum_k w_k c_k
    SNIPS  sum_k (sum_i w_ik c_ik / sum_i w_ik)        per slot self-normalised (consistent, a small
                                                       bias, far less variance)
    DR     sum_k w_k (c_k - q_k(a)) + d_k q_k(t)       d_k = w_{k-1} (cascade, w_0 = 1) or 1 (item);
                                                       unbiased if either q or the weights are right
    SNDR   sum_k q_k(t) + (sum_i w_ik (c_ik - q_ik(a)) / sum_i w_ik)    item form only: DR with each
                                                       slot's correction self-normalised, as SNIPS
                                                       (the heavy tail of 1 / P(a_k on k) tamed)

Intervals are normal intervals of the mean of per-request values (IPS, DR) or of SNIPS's
per-request influence (the delta method of a ratio), and the lift over production's on-policy
mean (an independent sample of the requests it served greedily) by the delta method of two
independent means (gref.stats.independent_ratio_lift). How far they can be trusted is measured
against an oracle by benchmarks.offpolicy_audit (docs/results-offpolicy.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from scipy import stats
from torch import Tensor

from gref.data.batch import collate, iter_tables
from gref.losses import slot_log_distributions, slot_log_probs
from gref.model.decoding import decode
from gref.model.reranker import GenReranker
from gref.stats import independent_ratio_lift

ESTIMATORS = ("ips", "snips", "dr", "sndr")
Form = Literal["cascade", "item"]  # prefix-matching weights, or one slot at a time
FORMS: tuple[Form, ...] = get_args(Form)


@torch.no_grad()
def logging_propensities(model: GenReranker, num: Tensor, cat: Tensor, cand_mask: Tensor, placed: Tensor,
                         temperature: float = 1.0) -> Tensor:
    """log P(placed_k | the decoding state that placed it) under ``decode(model, ...,
    temperature=temperature)`` -- the sampling the endpoint's explored traffic used -- recomputed
    by teacher forcing from the logged list (their sum is the logged ``log_propensity``).
    num [B, M, F], cat [B, M, C], cand_mask [B, M], placed [B, N] (-1 = none) -> [B, N] (0 past a list's end)."""
    lengths = (placed >= 0).sum(1)
    seq = placed.clamp(min=0)
    logits = model(num, cat, cand_mask, seq[:, None])[:, 0] / temperature  # [B, k, N, M]
    return slot_log_probs(logits, seq, lengths, model.k)


@torch.no_grad()
def item_position_marginals(model: GenReranker, num: Tensor, cat: Tensor, cand_mask: Tensor, n: int,
                            temperature: float, samples: int, generator: torch.Generator | None = None,
                            chunk: int = 64) -> Tensor:
    """P(candidate on slot k) under ``decode(model, ..., temperature=temperature)``, estimated from
    ``samples`` lists per request, Rao-Blackwellised: the mean over the sampled prefixes of slot k's
    whole sampling distribution (not of the indicator of the item drawn) -- unbiased, far less
    variance, and never 0 for a candidate the policy can place there.
    num [B, M, F], cat [B, M, C], cand_mask [B, M] -> [B, n, M] (rows past a request's m are 0)."""
    B, M = cand_mask.shape
    out = torch.zeros(B, n, M)
    for s in range(0, B, chunk):  # chunk * samples lists at once: bounded memory
        rows = slice(s, min(s + chunk, B))
        rep = [x[rows].repeat_interleave(samples, 0) for x in (num, cat, cand_mask)]
        placed = decode(model, *rep, n, temperature=temperature, generator=generator)  # [b * samples, n]
        live = placed >= 0
        logits = model(*rep, placed.clamp(min=0)[:, None])[:, 0] / temperature
        p = slot_log_distributions(logits, placed.clamp(min=0), model.k).exp() * live[..., None]
        out[rows] = p.view(-1, samples, n, M).mean(1).cpu()
    return out


def item_position_log_marginals(logged: np.ndarray, marginals: np.ndarray, log_propensity: np.ndarray,
                                samples: int) -> np.ndarray:
    """log P(a_k on slot k) of each logged item: item_position_marginals [B, >= N, M] from
    ``samples`` sampled prefixes, and the logged list itself as one more (its own slot k
    distribution gives a_k the probability exp(log_propensity_k) > 0: an item the other samples
    always placed earlier still gets a finite weight).
    logged [B, N] (-1 = none), log_propensity [B, N] (logging_propensities) -> [B, N] (0 past a list's end)."""
    N = logged.shape[1]
    m = np.take_along_axis(marginals[:, :N], np.clip(logged, 0, None)[..., None], axis=2)[..., 0].astype(np.float64)
    p = (samples * m + np.exp(log_propensity.astype(np.float64))) / (samples + 1)
    return np.where(logged >= 0, np.log(np.where(logged >= 0, p, 1.0)), 0.0)


def prefix_weights(logged: np.ndarray, target: np.ndarray, log_propensity: np.ndarray) -> np.ndarray:
    """Cascade weights w [B, N]: slot k's weight 1[logged prefix 1..k = target's] / P(logged prefix 1..k).
    logged [B, N] candidate indices of the sampled lists (-1 = none), target [B, >= N] the list the
    evaluated ranker places for the same request, log_propensity [B, N] per-slot log p_k.
    Slots past the logged list's end weigh 0."""
    N = logged.shape[1]
    live = logged >= 0
    match = np.cumprod((logged == target[:, :N]) & live, axis=1).astype(bool)
    return np.where(match, np.exp(-np.cumsum(np.where(live, log_propensity, 0.0), axis=1)), 0.0)


def item_position_weights(logged: np.ndarray, target: np.ndarray, log_marginal: np.ndarray) -> np.ndarray:
    """Item-position weights w [B, N]: 1[a_k = t_k] / P(a_k on slot k); shapes as prefix_weights,
    log_marginal [B, N] from item_position_log_marginals."""
    N = logged.shape[1]
    return np.where((logged == target[:, :N]) & (logged >= 0), np.exp(-log_marginal), 0.0)


def per_request_values(clicks: np.ndarray, w: np.ndarray, q_logged: np.ndarray | None = None,
                       q_target: np.ndarray | None = None, form: Form = "cascade") -> dict[str, np.ndarray]:
    """Per-request IPS and (given the click model's per-slot click probabilities of the logged
    list ``q_logged`` [B, N] and of the target list ``q_target`` [B, N]) DR values [B];
    clicks and w [B, N] (weights of ``form``: the direct term of slot k counts with w_{k-1} in the
    cascade form, always in the item-position form)."""
    out = {"ips": (w * clicks).sum(1)}
    if q_logged is not None and q_target is not None:
        N = w.shape[1]
        if form == "cascade":
            direct = np.concatenate([np.ones((len(w), 1)), w[:, :-1]], axis=1)  # w_{k-1}, w_0 = 1
        else:
            direct = np.ones_like(w)
        out["dr"] = (w * (clicks - q_logged) + direct * q_target[:, :N]).sum(1)
    return out


def snips_influence(clicks: np.ndarray, w: np.ndarray) -> tuple[float, np.ndarray]:
    """The per-slot self-normalised estimate sum_k (sum_i w_ik c_ik / sum_i w_ik) and each
    request's influence on it (its mean is 0; its variance / B is the estimate's delta-method
    variance). A slot no logged list matched adds 0. clicks, w [B, N] -> (value, [B])."""
    mass = w.mean(0)  # [N]
    safe = np.where(mass > 0, mass, 1.0)
    per_slot = np.where(mass > 0, (w * clicks).mean(0) / safe, 0.0)
    influence = (w * (clicks - per_slot[None]) / safe[None]).sum(1)
    return float(per_slot.sum()), influence


def estimates(clicks: np.ndarray, w: np.ndarray, production: np.ndarray, q_logged: np.ndarray | None = None,
              q_target: np.ndarray | None = None, form: Form = "cascade", level: float = 0.95,
              ) -> dict[str, dict[str, float]]:
    """Every estimator's E[clicks] of the target ranker with its interval, and its lift over
    production with an interval: {estimator: {value, lo, hi, lift, lift_lo, lift_hi}}.
    clicks, w [B, N] on the explored requests; production [P] the clicks of requests production
    served (greedy, the same population of requests, an independent sample); ``form``: the
    weights' ("cascade": prefix_weights, "item": item_position_weights)."""
    z = float(stats.norm.ppf(0.5 + level / 2))
    B = len(clicks)
    centred = {name: (float(v.mean()), v - v.mean()) for name, v in per_request_values(clicks, w, q_logged, q_target, form).items()}
    centred["snips"] = snips_influence(clicks, w)
    if form == "item" and q_logged is not None and q_target is not None:
        direct = q_target[:, :w.shape[1]].sum(1)
        value, influence = snips_influence(clicks - q_logged, w)  # the corrections, self-normalised per slot
        centred["sndr"] = (float(direct.mean()) + value, direct - direct.mean() + influence)
    out = {}
    for name in ESTIMATORS:
        if name not in centred:
            continue
        value, influence = centred[name]
        se = float(influence.std(ddof=1)) / math.sqrt(B)
        lift = independent_ratio_lift(value, se, production, level)
        out[name] = {"value": value, "lo": value - z * se, "hi": value + z * se,
                     "lift": lift["lift"], "lift_lo": lift["low"], "lift_hi": lift["high"]}
    return out


@dataclass
class LoggingPolicy:
    """The model whose sampled lists the explored requests show, as the endpoint sampled them."""

    model: GenReranker  # the served version that explored (the export's ``model`` column names it)
    temperature: float = 1.0  # the endpoint's explore_temperature
    samples: int = 100  # lists sampled per explored request for the item-position marginals
    seed: int = 0


def add_offpolicy(rows: dict[str, dict[str, Any]], table: pa.Table, meta: dict, policy: LoggingPolicy,
                  batch_size: int = 512) -> None:
    """Give every row its off-policy estimates from the split's explored requests (``explored`` = 1):
    ``ope_<form>_<estimator>`` (E[clicks]) and ``ope_<form>_<estimator>_lift`` over production's
    on-policy mean on the other requests, each with its 95 % interval (``_lo`` / ``_hi``), and
    ``ope_requests``. Reads (and removes) the rows' ``_explored_placed`` lists and, for DR,
    ``_explored_q`` (the click model's per-slot clicks of them; gref.evaluation.evaluate_ranker).
    The "logged exposure" row -- production itself on the other requests -- gets
    ``ope_production_clicks``."""
    placed = {name: r.pop("_explored_placed", None) for name, r in rows.items()}
    q_target = {name: r.pop("_explored_q", None) for name, r in rows.items()}
    explored = pc.equal(table.column("explored"), 1)
    sub, rest = table.filter(explored), table.filter(pc.invert(explored))
    if sub.num_rows < 2 or rest.num_rows < 2:  # an interval needs two requests on each side
        return
    click = rest.column("click").combine_chunks()
    production = np.bincount(pc.list_parent_indices(click).to_numpy(), minlength=rest.num_rows,
                             weights=pc.list_flatten(click).to_numpy(zero_copy_only=False))
    width = next(p.shape[1] for p in placed.values() if p is not None)
    parts: dict[str, list] = {"logged": [], "log_p": [], "log_m": [], "clicks": []}
    gen = torch.Generator().manual_seed(policy.seed)
    model = policy.model.eval().cpu()
    for part in iter_tables(sub, batch_size, shuffle=False):
        b = collate(part, meta["num_features"], len(meta["cat_sizes"]), meta["feedback_weights"])
        N = b.exposure.shape[1]
        logged = torch.where(torch.arange(N)[None] < b.lengths[:, None], b.exposure, -1)
        log_p = logging_propensities(model, b.num, b.cat, b.cand_mask, logged, policy.temperature).numpy()
        marginals = item_position_marginals(model, b.num, b.cat, b.cand_mask, N, policy.temperature, policy.samples,
                                            gen).numpy()
        logged_np = logged.numpy()

        def widen(x: np.ndarray, value: float) -> np.ndarray:
            return np.pad(x, ((0, 0), (0, width - x.shape[1])), constant_values=value)

        parts["logged"].append(widen(logged_np, -1))
        parts["log_p"].append(widen(log_p, 0.0))
        parts["log_m"].append(widen(item_position_log_marginals(logged_np, marginals, log_p, policy.samples), 0.0))
        parts["clicks"].append(widen(b.click.numpy() * (logged_np >= 0), 0.0))
    logged, log_p, log_m, clicks = (np.concatenate(parts[k]) for k in ("logged", "log_p", "log_m", "clicks"))
    q_logged = q_target.get("logged exposure")  # the click model's per-slot clicks of the logged (explored) lists
    rows["logged exposure"]["ope_production_clicks"] = float(production.mean())
    for name, r in rows.items():
        if name == "logged exposure" or placed[name] is None:
            continue
        weights = {"cascade": prefix_weights(logged, placed[name], log_p),
                   "item": item_position_weights(logged, placed[name], log_m)}
        r["ope_requests"] = sub.num_rows
        for form in FORMS:
            q_t = q_target[name] if q_logged is not None else None
            for est, v in estimates(clicks, weights[form], production, q_logged, q_t, form).items():
                key = f"ope_{form}_{est}"
                r[key], r[f"{key}_lo"], r[f"{key}_hi"] = v["value"], v["lo"], v["hi"]
                r[f"{key}_lift"], r[f"{key}_lift_lo"], r[f"{key}_lift_hi"] = v["lift"], v["lift_lo"], v["lift_hi"]
