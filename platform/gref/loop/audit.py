"""The oracle's audit of the loop (simulated users only): every version's greedy lists, and each
round's reward model's own lists, scored by the world's E[clicks] on one fixed set of requests.
The audit never makes a decision; it says whether the decisions were right."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from gref.loop.config import ContinuousConfig
from gref.loop.state import LoopState
from gref.stats import paired_ratio_lift


def _cached_audit(cfg: ContinuousConfig, name: str, compute: Callable[[], np.ndarray | None]) -> np.ndarray | None:
    """out/audit/<name>.npy, computed once (a resumed run and benchmarks.loop_recipes reuse it);
    None, and nothing cached, when ``compute`` has nothing to score."""
    cache = Path(cfg.out) / "audit" / f"{name}.npy"
    if not cache.exists():
        values = compute()
        if values is None:
            return None
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, values)
    return np.load(cache)


def audit_values(cfg: ContinuousConfig, world, version: int) -> np.ndarray:
    """E[clicks] (the oracle) of the version's greedy lists on the fixed audit requests, per request."""
    from gref import tracking
    from gref.data.features import FeatureSpec

    def compute() -> np.ndarray:
        uri = cfg.version_uri(version)
        spec = FeatureSpec.load(tracking.reranker_dir(uri) / "features.json")
        return audit_model_values(cfg, world, tracking.load_reranker_uri(uri), spec)

    return _cached_audit(cfg, f"v{version}", compute)


def teacher_values(cfg: ContinuousConfig, world, r: int) -> np.ndarray | None:
    """The oracle's E[clicks] of round r's reward model's own beam-search lists on the audit set (the
    teacher its challenger distils: how far the challenger got towards it); None without one."""
    from gref.data.features import FeatureSpec
    from gref.reranker_io import load_reranker

    model_dir = cfg.reward_dir(r)

    def compute() -> np.ndarray | None:
        if not (model_dir / "model.pt").exists():
            return None
        return audit_model_values(cfg, world, load_reranker(model_dir), FeatureSpec.load(model_dir / "features.json"))

    return _cached_audit(cfg, f"teacher-r{r}", compute)


def audit_model_values(cfg: ContinuousConfig, world, model, spec) -> np.ndarray:
    """E[clicks] (the oracle) of any reranker's lists (``model.rerank``: a GReF's greedy decode, the
    reward model's beam search) on the fixed audit requests, per request."""
    import torch

    from gref.serving.requests import encode_batch
    from gref.sim.user_model import expected_feedback
    from gref.serving.ab_client import simulated_requests

    model = model.eval()
    reqs = simulated_requests(world, cfg.audit_requests, 999_983 + cfg.seed)
    values = []
    for start in range(0, len(reqs), 256):
        chunk = reqs[start:start + 256]
        num, cat, mask = encode_batch([req["candidates"] for req in chunk], spec)
        with torch.no_grad():
            placed = model.rerank(torch.from_numpy(num), torch.from_numpy(cat), torch.from_numpy(mask), cfg.n).numpy()
        items = np.array([[int(req["candidates"][j]["item_id"]) if j >= 0 else -1 for j in row]
                          for req, row in zip(chunk, placed)], np.int64)
        users = np.array([req["user_id"] for req in chunk], np.int64)
        values.append(expected_feedback(world, users, items)["click"])
    return np.concatenate(values)


def audit_round(cfg: ContinuousConfig, world, state: LoopState, r: int) -> None:
    """The oracle's view of round r on the fixed audit set: each arm vs the round-0 champion, the
    challenger vs the champion (paired), and the round's reward's own lists (the teacher)."""
    rnd = state.round(r)
    base = audit_values(cfg, world, state.round0_champion)
    champion = audit_values(cfg, world, rnd.champion)
    rnd.audit_champion = float(champion.mean())
    rnd.audit_champion_vs_round0 = paired_ratio_lift(base, champion)
    if rnd.challenger is not None:
        challenger = audit_values(cfg, world, rnd.challenger)
        rnd.audit_challenger = float(challenger.mean())
        rnd.audit_challenger_vs_round0 = paired_ratio_lift(base, challenger)
        rnd.audit_lift = paired_ratio_lift(champion, challenger)
    teacher = None if cfg.aa else teacher_values(cfg, world, r)
    if teacher is not None:
        rnd.audit_teacher = float(teacher.mean())
        rnd.audit_teacher_vs_round0 = paired_ratio_lift(base, teacher)
