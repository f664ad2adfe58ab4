"""What a team's logs look like, and the decisions prepare takes from it (Ray-free).

- ``ts_scale``: timestamps in seconds are detected (the contract says ms) and scaled;
- ``choose_split``: the time split by calendar days, or by time quantiles when the days are too
  few; a split that would come out empty is an error naming the split and the option;
- ``partial_profile`` / ``merge_profiles``: the data profile (requests, m and n distributions,
  CTR by display slot) computed per block and merged, for summary.json, the console and MLflow.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from gref.data.schema import SchemaError
from gref.data.sequences import DAY_MS, split_boundaries

# ms since epoch below this is before 1973-03-03: such values are seconds (up to year 5138)
SECONDS_BELOW = 100_000_000_000
MAX_PROFILED_SLOTS = 50  # CTR by display slot is reported for the first slots only


def ts_scale(max_ts: int, unit: str) -> int:
    """Multiplier that turns the logs' ``ts`` into ms: ``unit`` is "ms", "s" or "auto"."""
    if unit not in ("auto", "ms", "s"):
        raise SchemaError(f"ts_unit must be auto | ms | s, got '{unit}'")
    if unit == "auto":
        return 1000 if 0 <= max_ts < SECONDS_BELOW else 1
    return 1000 if unit == "s" else 1


@dataclass
class Split:
    boundaries: tuple[int, int]  # (valid_start, test_start) in ms
    how: str  # "days" | "quantile"
    counts: dict[str, int]  # requests per split
    note: str  # one human line: why this split


def _counts(ts_ms: np.ndarray, boundaries: tuple[int, int]) -> dict[str, int]:
    valid = int(((ts_ms >= boundaries[0]) & (ts_ms < boundaries[1])).sum())
    test = int((ts_ms >= boundaries[1]).sum())
    return {"train": len(ts_ms) - valid - test, "valid": valid, "test": test}


def choose_split(ts_ms: np.ndarray, split: str, valid_days: int, test_days: int,
                 valid_fraction: float, test_fraction: float) -> Split:
    """Train/valid/test boundaries for requests at ``ts_ms`` (one per valid request).

    ``split``: "days" (the last ``test_days`` calendar days are test, the ``valid_days`` before
    them valid), "quantile" (the latest ``test_fraction`` of requests are test, the
    ``valid_fraction`` before them valid), or "auto" (days when every split gets requests, else
    quantiles). Raises SchemaError naming the empty split and the options that fix it.
    """
    if split not in ("auto", "days", "quantile"):
        raise SchemaError(f"split must be auto | days | quantile, got '{split}'")
    days = np.unique(ts_ms // DAY_MS)
    span = (f"{len(days)} calendar day(s), {pd.Timestamp(int(ts_ms.min()), unit='ms').date()} .. "
            f"{pd.Timestamp(int(ts_ms.max()), unit='ms').date()}")
    if split in ("auto", "days"):
        bounds = split_boundaries(int(ts_ms.max()), valid_days, test_days)
        counts = _counts(ts_ms, bounds)
        if min(counts.values()) > 0:
            return Split(bounds, "days", counts, f"by calendar day: the logs span {span}")
        if split == "days":
            empty = next(s for s, c in counts.items() if c == 0)
            raise SchemaError(f"the {empty} split is empty: the logs span {span}, and valid_days="
                              f"{valid_days} test_days={test_days} leave no request for it; "
                              "use split=quantile (valid_fraction, test_fraction) or change the days")
    if not (0 < valid_fraction and 0 < test_fraction and valid_fraction + test_fraction < 1):
        raise SchemaError("valid_fraction and test_fraction must be > 0 with a sum < 1 "
                          f"(got {valid_fraction}, {test_fraction})")
    q = np.quantile(ts_ms, [1 - test_fraction - valid_fraction, 1 - test_fraction], method="higher")
    bounds = (int(q[0]), int(q[1]))
    counts = _counts(ts_ms, bounds)
    if min(counts.values()) == 0:
        empty = next(s for s, c in counts.items() if c == 0)
        raise SchemaError(f"the {empty} split is empty even by time quantiles ({len(ts_ms)} request(s), "
                          f"{len(np.unique(ts_ms))} distinct timestamp(s)): the logs need more requests "
                          "at distinct times, or larger valid_fraction / test_fraction")
    why = "too few calendar days for valid_days/test_days: " if split == "auto" else ""
    return Split(bounds, "quantile", counts,
                 f"by time quantiles ({why}the logs span {span}; valid {valid_fraction:.0%}, "
                 f"test {test_fraction:.0%} of requests)")


def partial_profile(seqs: pa.Table) -> dict:
    """Counts of one block of sequence records (gref.data.sequences), JSON-ready."""
    m = seqs.column("m").to_numpy()
    n = seqs.column("n").to_numpy()
    click = seqs.column("click")
    slots = min(int(n.max(initial=0)), MAX_PROFILED_SLOTS)
    clicks = np.zeros(slots)
    shown = np.zeros(slots)
    if slots:
        flat = click.combine_chunks() if isinstance(click, pa.ChunkedArray) else click
        values = flat.flatten().to_numpy(zero_copy_only=False)
        offsets = flat.offsets.to_numpy()
        slot = np.arange(len(values)) - np.repeat(offsets[:-1], np.diff(offsets))
        keep = slot < slots
        clicks = np.bincount(slot[keep], weights=values[keep], minlength=slots)
        shown = np.bincount(slot[keep], minlength=slots).astype(float)
    return {"m": {int(k): int(v) for k, v in Counter(m.tolist()).items()},
            "n": {int(k): int(v) for k, v in Counter(n.tolist()).items()},
            "clicks_by_slot": clicks.tolist(), "shown_by_slot": shown.tolist(),
            "all_shown": int((m == n).sum()),
            "randomized": int(seqs.column("randomized").to_numpy().sum()) if "randomized" in seqs.column_names else 0}


def _add(a: list[float], b: list[float]) -> list[float]:
    size = max(len(a), len(b))
    return (np.pad(a, (0, size - len(a))) + np.pad(b, (0, size - len(b)))).tolist()


def _dist(hist: dict) -> dict:
    """min / mean / percentiles / max of an int value -> count histogram."""
    if not hist:
        return {}
    values = np.array(sorted(hist))
    counts = np.array([hist[k] for k in values.tolist()])
    cum = np.cumsum(counts) / counts.sum()
    pct = {f"p{p}": int(values[np.searchsorted(cum, p / 100)]) for p in (50, 90, 99)}
    return {"min": int(values[0]), "mean": round(float((values * counts).sum() / counts.sum()), 2),
            **pct, "max": int(values[-1])}


def merge_profiles(parts: list[dict]) -> dict:
    """One profile from the blocks' partial profiles."""
    m, n = Counter(), Counter()
    clicks: list[float] = []
    shown: list[float] = []
    all_shown = randomized = 0
    for p in parts:
        m.update({int(k): v for k, v in p["m"].items()})
        n.update({int(k): v for k, v in p["n"].items()})
        clicks, shown = _add(clicks, p["clicks_by_slot"]), _add(shown, p["shown_by_slot"])
        all_shown += p["all_shown"]
        randomized += p.get("randomized", 0)
    requests = sum(m.values())
    ctr = [round(c / s, 4) if s else None for c, s in zip(clicks, shown)]
    return {"requests": requests, "m": _dist(m), "n": _dist(n),
            "all_candidates_shown": round(all_shown / requests, 4) if requests else None,
            "clicks_per_request": round(sum(clicks) / requests, 4) if requests else None,
            "ctr_by_slot": ctr, "randomized_requests": randomized}


def profile_lines(profile: dict, splits: dict[str, int], quarantined: int) -> list[str]:
    """The profile as a few console lines."""
    def dist(d: dict) -> str:
        return f"min {d['min']}, median {d['p50']}, p99 {d['p99']}, max {d['max']}" if d else "-"
    ctr = ", ".join(f"{c:.3f}" for c in profile["ctr_by_slot"][:10] if c is not None)
    sizes = ", ".join(f"{s} {c:,}" for s, c in splits.items())
    bucket = profile.get("randomized_requests", 0)
    return [f"{profile['requests']:,} requests ({sizes}), {quarantined:,} quarantined"
            + (f", {bucket:,} in a randomisation bucket" if bucket else ""),
            (f"candidates m: {dist(profile['m'])}; shown n: {dist(profile['n'])}; "
             f"all candidates shown in {profile['all_candidates_shown']:.0%} of requests"),
            f"clicks per request {profile['clicks_per_request']}; CTR by slot 1..10: {ctr}"]
