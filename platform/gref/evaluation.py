"""Offline evaluation of rerankers and reference orders on a prepared split (no Ray).

Every row of a report -- a model or a reference order -- is judged the same way from two
things: the list it places (candidate indices) and a score per candidate (see gref.metrics
for AUC / NDCG). With a simulated world, the oracle adds what no logged dataset can: the
expected clicks / likes / long views of the placed list under the hidden user model.
Diversity: distinct ``cat_category`` values among a list's items / its length. Latency: the
wall time of the model's ``rerank`` alone (``timed_rerank``), in batches and one request at a time.

Reference rows: ``logged`` (the exposure order the production policy showed) and
``upstream`` (the previous stage's top n, in its order); with a simulated world, the ceilings of
gref.sim.reference (the oracle's best list and pointwise sort, and the same two from the
observable features only) and each row's share of the headroom (features-only best list over
the logged order) it captures. Without an oracle (real logs), and beside it: the click-model
estimate of every row's expected clicks (gref.clickmodel.estimate), with bootstrap CIs; where
the logs mark requests of a randomisation bucket (``randomized``), also an inverse-propensity
estimate on those requests alone (``ips_clicks``, ``randomized_ips``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import nn

from gref.clickmodel.estimate import BOOTSTRAP, ClickEstimator, bootstrap_summary
from gref.data.batch import Batch, collate, iter_tables
from gref.data.pairs import padded
from gref.losses import multi_token_loss
from gref.metrics import auc, ndcg
from gref.model.reranker import GenReranker
from gref.offpolicy import LoggingPolicy, add_offpolicy
from gref.sim.reference import HEADROOM_ROW
from gref.sim.reference import REFERENCE_ROWS as CEILINGS

DIVERSITY_COLUMN = "cat_category"  # the categorical feature whose distinct values measure diversity

# a ranker: Batch -> (placed [B, N] candidate indices (-1 = none), scores [B, M])
Ranker = Callable[[Batch], tuple[np.ndarray, np.ndarray]]


@torch.no_grad()
def timed_rerank(model: nn.Module, b: Batch, n: int) -> tuple[torch.Tensor, float]:
    """``model.rerank`` of a batch and its wall time in seconds (the GPU synchronised around it)."""
    cuda = b.num.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    placed = model.rerank(b.num, b.cat, b.cand_mask, n)
    if cuda:
        torch.cuda.synchronize()
    return placed, time.perf_counter() - t0


def model_ranker(model: nn.Module) -> Ranker:
    """Any reranker of the platform (GenReranker or a gref.baselines model): its ``rerank`` list
    and ``item_scores``. ``rank.seconds`` accumulates the time spent in ``rerank`` alone."""
    @torch.no_grad()
    def rank(b: Batch):
        placed, seconds = timed_rerank(model, b, int(b.lengths.max()))
        rank.seconds += seconds
        return placed.cpu().numpy(), model.item_scores(b.num, b.cat, b.cand_mask, placed).cpu().numpy()
    rank.seconds = 0.0
    return rank


def logged_ranker(b: Batch):
    """The exposure order itself; unexposed candidates score below every exposed one."""
    exposure, lengths = b.exposure.numpy(), b.lengths.numpy()
    valid = np.arange(exposure.shape[1])[None] < lengths[:, None]
    scores = np.where(b.cand_mask.numpy(), -1.0 - np.arange(b.cand_mask.shape[1])[None] / 1e3, -np.inf)
    rows, slots = np.nonzero(valid)  # padded slots hold candidate 0: never write through them
    scores[rows, exposure[rows, slots]] = exposure.shape[1] - slots
    return np.where(valid, exposure, -1), scores


def upstream_ranker(b: Batch):
    """The previous stage's order: top n by upstream rank."""
    M, N = b.cand_mask.shape[1], b.exposure.shape[1]
    placed = np.broadcast_to(np.arange(N), (b.size, N)).copy()
    placed = np.where(placed < b.lengths.numpy()[:, None], placed, -1)
    scores = np.where(b.cand_mask.numpy(), -np.arange(M, dtype=float)[None], -np.inf)
    return placed, scores


def evaluate_ranker(rank: Ranker, table: pa.Table, meta: dict[str, Any], world=None,
                    batch_size: int = 512, device: str | torch.device = "cpu",
                    nll_model: GenReranker | None = None, estimator: ClickEstimator | None = None,
                    explored: bool = False) -> dict[str, Any]:
    """AUC / NDCG, diversity (and oracle feedback with a ``world``) of ``rank`` on ``table``.
    With ``nll_model``, also its teacher-forced L_n on the exposure order (``val_nll``); with an
    ``estimator``, the click models' per-request E[clicks] (arrays under ``_est_<kind>``); with
    ``explored``, the ranker's lists on the split's explored requests and their direct-part clicks
    (``_explored_placed`` / ``_explored_q``, for gref.offpolicy.add_offpolicy)."""
    from gref.sim.user_model import expected_feedback

    acc: dict[str, list] = {k: [] for k in ("cs", "cl", "es", "el", "ns", "ng", "nv", "div",
                                            "o_click", "o_like", "o_long", "ips", "unseen", "placed",
                                            "ex_placed", "ex_q")}
    est: dict[str, list] = {}
    nll, n_req, width = 0.0, 0, 0
    div_col = meta.get("cat_cols", []).index(DIVERSITY_COLUMN) if DIVERSITY_COLUMN in meta.get("cat_cols", []) else None
    for part in iter_tables(table, batch_size, shuffle=False):
        b = collate(part, meta["num_features"], len(meta["cat_sizes"]), meta["feedback_weights"])
        bd = b.to(device)
        if nll_model is not None:
            with torch.no_grad():
                logits = nll_model(bd.num, bd.cat, bd.cand_mask, bd.exposure[:, None])[:, 0]
                nll += float(multi_token_loss(logits, bd.exposure, bd.lengths)) * b.size
        placed, scores = rank(bd)
        exposure, lengths, click = b.exposure.numpy(), b.lengths.numpy(), b.click.numpy()
        if estimator is not None:
            for kind, v in estimator.expected_clicks(n_req + np.arange(b.size), placed, lengths, b.num, b.cat).items():
                est.setdefault(kind, []).append(v)
            unseen, shown = estimator.unseen(n_req + np.arange(b.size), placed, lengths)
            acc["unseen"].append(unseen); acc["placed"].append(shown)
        n_req += b.size
        slot = np.arange(exposure.shape[1])[None] < lengths[:, None]
        exp_scores = np.take_along_axis(scores, exposure, axis=1)
        acc["cs"].append(exp_scores[slot]); acc["cl"].append(click[slot])
        mask = b.cand_mask.numpy()
        exposed = np.zeros_like(mask)
        rows, slots = np.nonzero(slot)
        exposed[rows, exposure[rows, slots]] = True
        acc["es"].append(scores[mask]); acc["el"].append(exposed[mask])
        acc["ns"].append(exp_scores); acc["ng"].append(click); acc["nv"].append(slot)
        width = max(width, exposure.shape[1])
        if explored and "explored" in part.column_names:  # the lists it places where exploration logged one
            ex = part.column("explored").to_numpy(zero_copy_only=False) == 1
            ex_placed = np.where(np.arange(exposure.shape[1])[None] < lengths[:, None], placed[:, : exposure.shape[1]], -1)
            acc["ex_placed"].append(ex_placed[ex])
            if estimator is not None and "pbm_features" in estimator.models:  # DR's direct part
                q = estimator.feature_slot_clicks(n_req - b.size + np.flatnonzero(ex), ex_placed[ex], lengths[ex],
                                                  b.num[torch.from_numpy(ex)], b.cat[torch.from_numpy(ex)])
                acc["ex_q"].append(q)
        if "randomized" in part.column_names:
            acc["ips"].append(randomized_ips(placed, exposure, lengths, click, b.cand_mask.numpy().sum(1),
                                             part.column("randomized").to_numpy(zero_copy_only=False) == 1))
        if div_col is not None:
            acc["div"].append(distinct_fraction(b.cat[..., div_col].numpy(), placed[:, : exposure.shape[1]], lengths))
        if world is not None:
            items = padded(part.column("item_id"), -1).astype(np.int64)
            placed = np.where((placed >= 0) & (np.arange(placed.shape[1])[None] < lengths[:, None]), placed, -1)
            ids = np.where(placed >= 0, np.take_along_axis(items, np.clip(placed, 0, None), axis=1), -1)
            fb = expected_feedback(world, np.asarray(part.column("user_id").to_numpy(), dtype=np.int64), ids)
            acc["o_click"].append(fb["click"]); acc["o_like"].append(fb["like"]); acc["o_long"].append(fb["long_view"])

    def pad(arrs, v):
        return np.concatenate([np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=v) for a in arrs])

    out = {"requests": n_req,
           "ndcg": ndcg(pad(acc["ns"], 0.0), pad(acc["ng"], 0.0), pad(acc["nv"], False)),
           "auc_click": auc(np.concatenate(acc["cs"]), np.concatenate(acc["cl"])),
           "auc_exposure": auc(np.concatenate(acc["es"]), np.concatenate(acc["el"]))}
    if div_col is not None:
        out["diversity"] = float(np.concatenate(acc["div"]).mean())
    if nll_model is not None:
        out["val_nll"] = nll / max(n_req, 1)
    if world is not None:
        out["oracle_clicks"] = float(np.concatenate(acc["o_click"]).mean())
        out["oracle_likes"] = float(np.concatenate(acc["o_like"]).mean())
        out["oracle_long_views"] = float(np.concatenate(acc["o_long"]).mean())
    for kind, parts in est.items():
        out[f"_est_{kind}"] = np.concatenate(parts)
    if acc["unseen"]:  # the share of placed items the click models extrapolate to (never shown in their logs)
        out["unseen_share"] = float(np.concatenate(acc["unseen"]).sum() / max(np.concatenate(acc["placed"]).sum(), 1))
    if acc["ips"]:
        out["_ips"] = np.concatenate(acc["ips"])
    if acc["ex_placed"]:  # for gref.offpolicy.add_offpolicy
        out["_explored_placed"] = pad(acc["ex_placed"], -1)
        if acc["ex_q"]:
            out["_explored_q"] = pad(acc["ex_q"], 0.0)
    return out


def randomized_ips(placed: np.ndarray, exposure: np.ndarray, lengths: np.ndarray, click: np.ndarray,
                   m: np.ndarray, randomized: np.ndarray) -> np.ndarray:
    """Per-request item-position IPS estimate of the clicks a list would get, from the requests
    of a randomisation bucket (gref.sim.logs.randomize: every candidate on every slot with
    probability 1/m): sum over slots k < n of 1[placed_k = shown_k] * click_k * m. Its mean over
    the bucket is unbiased for the list's E[clicks] whenever a click on slot k depends only on
    (request, item, k) -- no list effects (Li et al., 2018, "Offline evaluation of ranking
    policies with click models"); with list effects it is biased, measured in docs/evaluation.md.
    placed [B, >=N] (-1 = none), exposure / click [B, N], lengths / m / randomized [B] -> [B]
    (NaN for requests outside the bucket)."""
    N = exposure.shape[1]
    slot = np.arange(N)[None] < lengths[:, None]
    match = (placed[:, :N] == exposure) & slot
    values = (match * click).sum(1) * m
    return np.where(randomized, values.astype(float), np.nan)


def distinct_fraction(categories: np.ndarray, placed: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Diversity of each list: distinct categories among its placed items / items placed.
    categories [B, M] category id per candidate, placed [B, N] (-1 = none), lengths [B] -> [B]."""
    valid = (placed >= 0) & (np.arange(placed.shape[1])[None] < lengths[:, None])
    cats = np.where(valid, np.take_along_axis(categories, np.clip(placed, 0, None), axis=1), -1)
    s = np.sort(cats, axis=1)
    first = np.ones_like(valid)
    first[:, 1:] = s[:, 1:] != s[:, :-1]
    distinct = (first & (s >= 0)).sum(1)
    return distinct / np.maximum(valid.sum(1), 1)


def single_request_latency(model: nn.Module, table: pa.Table, meta: dict[str, Any],
                           device: str | torch.device = "cpu", requests: int = 100) -> float:
    """ms per request of ``model.rerank`` called one request at a time over the first
    ``requests`` of ``table`` (an online call; the paper's Table 2 quotes per-sample latency)."""
    k = min(requests, table.num_rows)
    batches = [collate(table.slice(i, 1), meta["num_features"], len(meta["cat_sizes"]),
                       meta["feedback_weights"]).to(device) for i in range(k)]
    timed_rerank(model, batches[0], int(batches[0].lengths.max()))  # warm-up
    return 1000.0 * sum(timed_rerank(model, b, int(b.lengths.max()))[1] for b in batches) / max(k, 1)


def evaluate_model(model: nn.Module, table: pa.Table, meta: dict[str, Any], world=None,
                   batch_size: int = 512, device: str | torch.device = "cpu",
                   estimator: ClickEstimator | None = None, explored: bool = False) -> dict[str, Any]:
    """Metrics of a model's generated lists (val_nll too for a GenReranker), and ``latency_ms``:
    the time of ``rerank`` alone per request, in batches of ``batch_size`` (``explored``: as evaluate_ranker)."""
    model.eval()
    nll_model = model if isinstance(model, GenReranker) else None
    rank = model_ranker(model)
    out = evaluate_ranker(rank, table, meta, world, batch_size, device, nll_model=nll_model, estimator=estimator,
                          explored=explored)
    out["latency_ms"] = 1000.0 * rank.seconds / max(table.num_rows, 1)
    return out


def reference_ranker(name: str, world, features_only) -> Ranker:
    """A reference row of gref.sim.reference as a ranker (its lists; scores = list order only)."""
    from gref.model.decoding import list_scores
    from gref.sim.reference import reference_list

    def rank(b: Batch):
        placed = reference_list(name, world, features_only, b, int(b.lengths.max()))
        return placed.numpy(), list_scores(placed, torch.zeros(b.cand_mask.shape), b.cand_mask).numpy()
    return rank


def report_rows(models: dict[str, nn.Module], table: pa.Table, meta: dict[str, Any], world=None,
                batch_size: int = 512, device: str | torch.device = "cpu",
                fit_table: pa.Table | None = None,
                estimator: ClickEstimator | None = None, compare_to: str = "",
                logging: LoggingPolicy | None = None) -> dict[str, dict[str, float]]:
    """Reference orders + every model (decoded on ``device``, latency measured), one dict of
    metrics per row. With a world, each row gets ``click_lift`` = its expected clicks relative to
    the logged exposure order, and -- given ``fit_table`` (the train split, where the features-only
    reference is fitted) -- the reference rows of gref.sim.reference and every row's
    ``headroom_share`` = (row - logged) / (features-only best list - logged). With an
    ``estimator`` (no oracle needed), every row gets ``est_clicks_<kind>`` and ``est_lift_<kind>``
    (paired, over the logged order) with bootstrap 95 % CIs (``_lo`` / ``_hi``). With ``compare_to``
    (the name of one of ``models``: the current champion), every other model gets its paired gain
    over that row on the same requests (add_gains): what an offline promotion decides on. With
    ``logging`` (the model whose sampled lists the split's ``explored`` requests show), every row
    gets the off-policy estimates of gref.offpolicy (``ope_*``) from those requests."""
    explored = logging is not None  # keep each row's lists on the explored requests for add_offpolicy
    rows = {"logged exposure": evaluate_ranker(logged_ranker, table, meta, world, batch_size, estimator=estimator,
                                               explored=explored),
            "upstream order": evaluate_ranker(upstream_ranker, table, meta, world, batch_size, estimator=estimator,
                                              explored=explored)}
    rows["logged exposure"]["auc_exposure"] = float("nan")  # trivially 1: it defines the exposure
    if world is not None and fit_table is not None:
        from gref.sim.reference import fit_features_only

        features_only = fit_features_only(world, fit_table, meta)
        for name in CEILINGS:
            rows[name] = evaluate_ranker(reference_ranker(name, world, features_only), table, meta, world,
                                         batch_size, estimator=estimator, explored=explored)
            for key in ("auc_click", "auc_exposure", "ndcg"):  # its scores are its list order alone
                rows[name][key] = float("nan")
    for name, model in models.items():
        model = model.to(device)
        rows[name] = evaluate_model(model, table, meta, world, batch_size, device, estimator, explored)
        rows[name]["latency_ms_b1"] = single_request_latency(model, table, meta, device)
    if compare_to:
        add_gains(rows, [n for n in models if n != compare_to], compare_to)
    add_estimates(rows)
    add_ips(rows, table)
    if logging is not None and "explored" in table.column_names:
        add_offpolicy(rows, table, meta, logging)
    if world is not None:
        base = rows["logged exposure"]["oracle_clicks"]
        for r in rows.values():
            r["click_lift"] = r["oracle_clicks"] / base - 1.0
        if fit_table is not None:
            headroom = rows[HEADROOM_ROW]["oracle_clicks"] - base
            for r in rows.values():
                r["headroom_share"] = (r["oracle_clicks"] - base) / headroom if headroom > 0 else float("nan")
    return rows


def add_gains(rows: dict[str, dict[str, Any]], names: list[str], reference: str) -> None:
    """Give each of ``names`` its gain over the ``reference`` row on the same requests:
    ``gain_<kind>`` = E[clicks] / the reference's - 1 by each click model, with a paired bootstrap
    95 % CI (``_lo`` / ``_hi``: the same resampled requests for both rows), and with an oracle
    ``gain_oracle`` (exact on these requests). Reads the per-request ``_est_<kind>`` arrays, so
    it runs before add_estimates replaces them by their means."""
    ref = rows[reference]
    kinds = [k[len("_est_"):] for k in ref if k.startswith("_est_")]
    for name in names:
        r = rows[name]
        for kind in kinds:
            s = bootstrap_summary(r[f"_est_{kind}"], ref[f"_est_{kind}"])
            r[f"gain_{kind}"], r[f"gain_{kind}_lo"], r[f"gain_{kind}_hi"] = s["lift"], s["lift_lo"], s["lift_hi"]
        if "oracle_clicks" in r:
            r["gain_oracle"] = r["oracle_clicks"] / ref["oracle_clicks"] - 1.0


def add_estimates(rows: dict[str, dict[str, Any]]) -> None:
    """Replace the per-request ``_est_<kind>`` arrays of every row by their means and paired lifts
    over the logged exposure order, each with a bootstrap 95 % CI (same resamples for all rows),
    and add ``est_lift_min``: the smallest lift any of the click models gives the row."""
    kinds = [k[len("_est_"):] for k in rows["logged exposure"] if k.startswith("_est_")]
    for kind in kinds:
        base = rows["logged exposure"][f"_est_{kind}"]
        for r in rows.values():
            s = bootstrap_summary(r.pop(f"_est_{kind}"), base)
            for key, value in s.items():
                r[key.replace("mean", f"est_clicks_{kind}").replace("lift", f"est_lift_{kind}")] = value
    if kinds:  # the most pessimistic of the click models: what a promotion should rely on
        for r in rows.values():
            r["est_lift_min"] = min(r[f"est_lift_{kind}"] for kind in kinds)


def add_ips(rows: dict[str, dict[str, Any]], table: pa.Table, seed: int = 0) -> None:
    """Replace every row's per-request ``_ips`` values by their mean over the randomisation bucket
    (``ips_clicks``, 95 % bootstrap CI ``_lo`` / ``_hi``, ``ips_requests``) and its lift over
    production (``ips_lift`` and CI): production's E[clicks] is its on-policy mean on the requests
    outside the bucket, so the "logged exposure" row gets that mean (the bucket's own lists are
    random, not production's). The two samples are independent: their resamples are too."""
    if "_ips" not in rows["logged exposure"]:
        return
    values = {name: r.pop("_ips") for name, r in rows.items()}
    randomized = table.column("randomized").to_numpy(zero_copy_only=False) == 1
    click = table.column("click").combine_chunks()
    per_request = np.bincount(pc.list_parent_indices(click).to_numpy(), minlength=table.num_rows,
                              weights=pc.list_flatten(click).to_numpy(zero_copy_only=False))
    production = per_request[~randomized]
    R, P = int(randomized.sum()), len(production)
    if not R:
        return
    samples = {name: values[name][randomized] for name in rows if name != "logged exposure"}
    if P:
        samples["logged exposure"] = production
    rng = np.random.default_rng(seed)
    means: dict[str, list] = {name: [] for name in samples}
    for start in range(0, BOOTSTRAP, 100):  # 100 resamples at a time: bounded memory
        k = min(100, BOOTSTRAP - start)
        bucket_idx = rng.integers(R, size=(k, R))
        production_idx = rng.integers(P, size=(k, P)) if P else None
        for name, sample in samples.items():
            means[name].append(sample[production_idx if name == "logged exposure" else bucket_idx].mean(1))
    for name, sample in samples.items():
        r, boot = rows[name], np.concatenate(means[name])
        r["ips_clicks"], r["ips_requests"] = float(sample.mean()), len(sample)
        r["ips_clicks_lo"], r["ips_clicks_hi"] = (float(q) for q in np.quantile(boot, [0.025, 0.975]))
        if P:
            base = np.concatenate(means["logged exposure"])
            r["ips_lift"] = float(sample.mean() / production.mean() - 1.0)
            r["ips_lift_lo"], r["ips_lift_hi"] = (float(q) for q in np.quantile(boot / base - 1.0, [0.025, 0.975]))


def kendall_tau(a: list[float], b: list[float]) -> float:
    """Kendall's tau-a of two score lists over the same rows (ties count 0)."""
    a, b = np.asarray(a), np.asarray(b)
    i, j = np.triu_indices(len(a), 1)
    pairs = len(i)
    return float((np.sign(a[i] - a[j]) * np.sign(b[i] - b[j])).sum() / pairs) if pairs else float("nan")


def estimate_audit(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """How far the click-model estimate can be trusted, where an oracle exists: per kind, the rank
    agreement of the rows (Kendall tau of est vs oracle E[clicks]) and the estimate's relative
    bias on the logged exposure order and on the lift of every row."""
    out = {}
    names = [n for n, r in rows.items() if "oracle_clicks" in r]
    for kind in [k[len("est_clicks_"):] for k in rows["logged exposure"]
                 if k.startswith("est_clicks_") and not k.endswith(("_lo", "_hi"))]:
        if not names:
            break
        est = [rows[n][f"est_clicks_{kind}"] for n in names]
        oracle = [rows[n]["oracle_clicks"] for n in names]
        logged = rows["logged exposure"]
        lift_err = [rows[n][f"est_lift_{kind}"] - rows[n]["click_lift"] for n in names if "click_lift" in rows[n]]
        out[kind] = {"kendall_tau": kendall_tau(est, oracle), "rows": len(names),
                     "logged_bias": logged[f"est_clicks_{kind}"] / logged["oracle_clicks"] - 1.0,
                     "mean_abs_lift_error": float(np.mean(np.abs(lift_err))) if lift_err else float("nan")}
    # the randomisation bucket's IPS estimate, on the rows it judges (a list per request: not the
    # "logged exposure" row, which there is production's own mean outside the bucket)
    ips = [n for n in names if "ips_clicks" in rows[n] and n != "logged exposure"]
    if len(ips) >= 2:
        err = [rows[n]["ips_clicks"] / rows[n]["oracle_clicks"] - 1.0 for n in ips]
        out["ips"] = {"kendall_tau": kendall_tau([rows[n]["ips_clicks"] for n in ips],
                                                 [rows[n]["oracle_clicks"] for n in ips]),
                      "rows": len(ips), "requests": rows[ips[0]]["ips_requests"],
                      "mean_abs_rel_error": float(np.mean(np.abs(err))), "mean_rel_error": float(np.mean(err))}
    return out


COLUMNS = [("oracle_clicks", "E[clicks]", "{:.4f}"), ("click_lift", "vs logged", "{:+.2%}"),
           ("headroom_share", "headroom share", "{:.0%}"), ("oracle_likes", "E[likes]", "{:.4f}"), ("oracle_long_views", "E[long views]", "{:.4f}"),
           ("est_clicks_pbm", "est. E[clicks] PBM", "{:.4f}"), ("est_lift_pbm", "PBM vs logged [95% CI]", "{:+.2%}"),
           ("est_clicks_dbn", "est. E[clicks] DBN", "{:.4f}"), ("est_lift_dbn", "DBN vs logged [95% CI]", "{:+.2%}"),
           ("est_clicks_pbm_features", "est. E[clicks] feature PBM", "{:.4f}"),
           ("est_lift_pbm_features", "feature PBM vs logged [95% CI]", "{:+.2%}"),
           ("unseen_share", "placed never shown (click models extrapolate)", "{:.1%}"),
           ("gain_pbm", "PBM vs champion [95% CI]", "{:+.2%}"), ("gain_dbn", "DBN vs champion [95% CI]", "{:+.2%}"),
           ("gain_pbm_features", "feature PBM vs champion [95% CI]", "{:+.2%}"),
           ("ips_clicks", "IPS E[clicks] (randomised bucket)", "{:.4f}"),
           ("ips_lift", "IPS vs production [95% CI]", "{:+.2%}"),
           ("ope_item_snips_lift", "SNIPS vs production, explored (item-position) [95% CI]", "{:+.2%}"),
           ("ope_item_dr_lift", "DR vs production, explored (item-position) [95% CI]", "{:+.2%}"),
           ("ndcg", "NDCG", "{:.4f}"), ("auc_click", "AUC click", "{:.4f}"),
           ("auc_exposure", "AUC exposure", "{:.4f}"), ("diversity", "diversity", "{:.3f}"),
           ("latency_ms", "ms/req (batch)", "{:.3f}"), ("latency_ms_b1", "ms/req (1 by 1)", "{:.2f}")]


SUMMARY_KEYS = ("oracle_clicks", "click_lift", "headroom_share", "est_lift_pbm", "est_lift_dbn", "est_lift_pbm_features",
                "ips_lift", "ope_item_dr_lift")


def markdown_table(rows: dict[str, dict[str, float]], keys: tuple[str, ...] | None = None) -> str:
    """Every column some row has, or only ``keys`` among them (e.g. SUMMARY_KEYS: a console summary)."""
    cols = [c for c in COLUMNS if any(c[0] in r for r in rows.values()) and (keys is None or c[0] in keys)]
    lines = ["| model | " + " | ".join(c[1] for c in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for name, r in rows.items():
        cells = []
        for key, _, fmt in cols:
            v = r.get(key)
            cell = "–" if v is None or v != v else fmt.format(v)
            if key.startswith(("est_lift_", "ips_lift", "gain_", "ope_")) and f"{key}_lo" in r and name != "logged exposure":
                cell += f" [{fmt.format(r[f'{key}_lo'])}, {fmt.format(r[f'{key}_hi'])}]"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


LOGGED_ROWS = ("logged exposure", "upstream order")  # what production and the previous stage showed


def bar_chart(rows: dict[str, dict[str, float]], path, title: str = ""):
    """Expected clicks per request of every row: the oracle's where there is one, else the DBN
    click-model estimate with its 95 % CI as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    oracle = any("oracle_clicks" in r for r in rows.values())
    key = "oracle_clicks" if oracle else "est_clicks_dbn"
    names = [n for n in rows if key in rows[n]]
    values = [rows[n][key] for n in names]
    errors = None if oracle else np.array([[rows[n][key] - rows[n][f"{key}_lo"], rows[n][f"{key}_hi"] - rows[n][key]]
                                           for n in names]).T
    fig, ax = plt.subplots(figsize=(1.3 * len(names) + 2, 3.8))
    bars = ax.bar(names, values, yerr=errors, capsize=3, color=[bar_color(n) for n in names],
                  hatch=["//" if n in CEILINGS else "" for n in names])
    ax.bar_label(bars, fmt="%.3f")
    ax.set_ylim(min(values) * 0.9, max(values) * 1.05)
    ax.set_ylabel("E[clicks] / request")
    ax.set_title(title or ("Expected clicks per request (oracle) -- hatched: ceilings no model can reach" if oracle
                           else "Expected clicks per request, estimated by a DBN click model (95% CI)"))
    plt.setp(ax.get_xticklabels(), rotation=15, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def bar_color(name: str) -> str:
    """Grey: what was shown and the ceilings; orange: GReF; blue: the other models."""
    if name in LOGGED_ROWS or name in CEILINGS:
        return "#999999"
    return "#d8703b" if name.startswith("GReF") else "#3b7dd8"
