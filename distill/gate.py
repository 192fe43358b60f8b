"""The promotion gate: is the candidate better than the model in service, beyond the noise?

Both models are scored on the same held-out items, so the comparison is paired: for each item the
difference candidate − service in edit similarity (ES) and exact match (EM). The mean difference is
the gain; its 95 % interval comes from a paired bootstrap (items are resampled, each keeping its two
scores together), computed by `scipy.stats.bootstrap` (BCa, 10,000 resamples, seeded).

A candidate is promoted only if all of these hold (`decide`):
1. enough items: at least `min_items` paired items, or all the items the repository has when it has
   fewer (then the reasons say so), and never fewer than `MIN_ITEMS_FLOOR`;
2. ES: the lower bound of the gain's interval is above 0 (the gain is not noise);
3. EM: no significant loss, and no large one: the upper bound of the EM gain's interval is ≥ 0
   (the data are consistent with no loss) and the mean EM gain is ≥ −`max_em_drop`;
4. every guard holds (e.g. HumanEval infilling pass@1, distill/humaneval.py).

Per-item scores are what `distill.evaluate` computes per item: `exact_match` (0/1) and
`edit_similarity` (0..1), with the item's `id` (`EvalItem.id`). `paired_scores` accepts them as
`ItemScore`s, dicts with those keys, or a mapping id → (exact_match, edit_similarity).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import StropError

MIN_ITEMS_FLOOR = 20  # below this a bootstrap interval says nothing: no promotion whatever the repository
N_RESAMPLES = 10_000
CONFIDENCE = 0.95


class GateError(StropError):
    pass


@dataclass(frozen=True)
class ItemScore:
    id: str
    exact_match: float
    edit_similarity: float


@dataclass(frozen=True)
class GuardCheck:
    """One guard's verdict: a benchmark beyond the repository the candidate must not get worse on."""

    name: str
    holds: bool
    detail: str
    base: float | None = None
    candidate: float | None = None


@dataclass
class Decision:
    promote: bool
    reasons: list[str]
    es_gain: float
    es_ci: tuple[float, float]
    em_gain: float
    em_ci: tuple[float, float]
    n_items: int
    guards: list[GuardCheck] = field(default_factory=list)
    es_boot: np.ndarray | None = field(default=None, repr=False)  # bootstrap distributions (for the plot)
    em_boot: np.ndarray | None = field(default=None, repr=False)

    def to_json(self) -> dict:
        data = asdict(self)
        data.pop("es_boot")
        data.pop("em_boot")
        return data


def _as_item(value: Any, key: str | None = None) -> ItemScore:
    if isinstance(value, ItemScore):
        return value
    if isinstance(value, Mapping):
        try:
            return ItemScore(str(value.get("id", key)), float(value["exact_match"]), float(value["edit_similarity"]))
        except KeyError as err:
            raise GateError(f"a per-item score lacks {err}: each needs id, exact_match and edit_similarity") from err
    if hasattr(value, "exact_match") and hasattr(value, "edit_similarity"):
        return ItemScore(str(getattr(value, "id", key)), float(value.exact_match), float(value.edit_similarity))
    if isinstance(value, Sequence) and len(value) == 2 and key is not None:
        return ItemScore(str(key), float(value[0]), float(value[1]))
    raise GateError(f"cannot read a per-item score from {type(value).__name__}: pass ItemScore, a dict with "
                    "id/exact_match/edit_similarity, or a mapping id → (exact_match, edit_similarity)")


def _by_id(scores, side: str) -> dict[str, ItemScore]:
    items = [_as_item(v, k) for k, v in scores.items()] if isinstance(scores, Mapping) else [_as_item(v) for v in scores]
    out: dict[str, ItemScore] = {}
    for it in items:
        if it.id in out:
            raise GateError(f"{side} scores: item id {it.id!r} appears twice; each held-out item is scored once")
        out[it.id] = it
    return out


def paired_scores(base_scores, cand_scores) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(ids, base, cand): arrays of shape (n, 2) = (exact_match, edit_similarity), rows paired by id."""
    base, cand = _by_id(base_scores, "model in service"), _by_id(cand_scores, "candidate")
    if base.keys() != cand.keys():
        only_b, only_c = sorted(base.keys() - cand.keys()), sorted(cand.keys() - base.keys())
        raise GateError(
            "the candidate and the model in service were not scored on the same items "
            f"({len(only_b)} only in service, e.g. {only_b[:3]}; {len(only_c)} only in the candidate, e.g. "
            f"{only_c[:3]}); score both on one held-out slice")
    ids = sorted(base)
    b = np.array([[base[i].exact_match, base[i].edit_similarity] for i in ids], dtype=np.float64).reshape(-1, 2)
    c = np.array([[cand[i].exact_match, cand[i].edit_similarity] for i in ids], dtype=np.float64).reshape(-1, 2)
    return ids, b, c


def bootstrap_mean(diff: np.ndarray, *, seed: int = 0, n_resamples: int = N_RESAMPLES,
                   confidence: float = CONFIDENCE) -> tuple[float, tuple[float, float], np.ndarray]:
    """Mean of paired differences, its BCa bootstrap interval and the bootstrap distribution."""
    from scipy import stats

    diff = np.asarray(diff, dtype=np.float64)
    mean = float(diff.mean())
    if np.all(diff == diff[0]):  # no spread: every resample has this mean (BCa is undefined here)
        return mean, (mean, mean), np.full(n_resamples, mean)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=stats.DegenerateDataWarning)
        res = stats.bootstrap((diff,), np.mean, n_resamples=n_resamples, confidence_level=confidence,
                              method="BCa", vectorized=True, rng=np.random.default_rng(seed))
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if not (np.isfinite(lo) and np.isfinite(hi)):  # BCa failed (e.g. almost all ties): percentile interval
        lo, hi = (float(q) for q in np.quantile(res.bootstrap_distribution, [(1 - confidence) / 2, (1 + confidence) / 2]))
    return mean, (lo, hi), res.bootstrap_distribution


def decide(base_scores, cand_scores, *, min_items: int = 200, available_items: int | None = None,
           guards: Sequence[GuardCheck] = (), max_em_drop: float = 0.02, seed: int = 0,
           n_resamples: int = N_RESAMPLES, min_es_gain: float = 0.0) -> Decision:
    """Promote the candidate or not (rules in the module docstring).

    `available_items` is how many held-out items the repository could give: when it is below
    `min_items`, all of them are enough (the reasons say the interval rests on fewer items)."""
    ids, base, cand = paired_scores(base_scores, cand_scores)
    n = len(ids)
    reasons: list[str] = []
    promote = True
    floor = min(MIN_ITEMS_FLOOR, min_items)  # a lower min_items (a test of the mechanism) lowers the floor too
    need = min_items if available_items is None else max(min(min_items, available_items), floor)
    if n < floor:
        promote = False
        reasons.append(f"only {n} paired items: the gate needs at least {MIN_ITEMS_FLOOR} to estimate noise")
    elif n < need:
        promote = False
        reasons.append(f"only {n} paired items, {need} required (min_items={min_items}): score more held-out items")
    elif n < min_items:
        reasons.append(f"{n} paired items, fewer than min_items={min_items}: the repository has no more, so the "
                       "intervals are wider")
    if n == 0:
        return Decision(False, reasons, 0.0, (0.0, 0.0), 0.0, (0.0, 0.0), 0, list(guards))
    diff = cand - base
    em_gain, em_ci, em_boot = bootstrap_mean(diff[:, 0], seed=seed, n_resamples=n_resamples)
    es_gain, es_ci, es_boot = bootstrap_mean(diff[:, 1], seed=seed + 1, n_resamples=n_resamples)
    pct = f"{CONFIDENCE:.0%}"
    if es_ci[0] > min_es_gain:
        reasons.append(f"edit similarity gain {es_gain:+.4f}, {pct} CI [{es_ci[0]:+.4f}, {es_ci[1]:+.4f}] above 0")
    else:
        promote = False
        reasons.append(f"edit similarity gain {es_gain:+.4f}, {pct} CI [{es_ci[0]:+.4f}, {es_ci[1]:+.4f}] "
                       "includes 0 or less: not distinguishable from noise")
    em_text = f"exact match gain {em_gain:+.4f}, {pct} CI [{em_ci[0]:+.4f}, {em_ci[1]:+.4f}]"
    if em_ci[1] < 0:
        promote = False
        reasons.append(f"{em_text}: exact match is significantly worse")
    elif em_gain < -max_em_drop:
        promote = False
        reasons.append(f"{em_text}: exact match fell by more than {max_em_drop}")
    else:
        reasons.append(f"{em_text}: no significant loss")
    for g in guards:
        if not g.holds:
            promote = False
        reasons.append(f"guard {g.name}: {'holds' if g.holds else 'FAILS'} ({g.detail})")
    return Decision(promote, reasons, es_gain, es_ci, em_gain, em_ci, n, list(guards), es_boot, em_boot)


def choose_on_validation(trials: Sequence[tuple[Any, Any]]) -> tuple[Any, float]:
    """The hyper-parameters whose validation scores have the best mean edit similarity, and that mean.

    `trials` is a list of (params, val_scores), val_scores per item as for `decide`. Only ever pass
    validation-slice scores: the test slice is scored once, with the chosen params, for `decide`;
    choosing on it would bias the gate's interval upwards. Ties go to the earlier trial, so list the
    preferred (e.g. closer to greedy) settings first.
    """
    if not trials:
        raise GateError("choose_on_validation: no trials given; score at least one setting on the validation slice")
    best, best_es = None, -np.inf
    for params, scores in trials:
        items = _by_id(scores, f"validation scores for {params!r}")
        if not items:
            raise GateError(f"validation scores for {params!r} are empty: the validation slice has no items")
        es = float(np.mean([it.edit_similarity for it in items.values()]))
        if es > best_es:
            best, best_es = params, es
    return best, best_es


def gate_plot(decision: Decision, path: Path) -> Path:
    """The bootstrap distributions of the ES and EM gains with their intervals (PNG or SVG by suffix)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    panels = (("edit similarity gain", decision.es_boot, decision.es_gain, decision.es_ci),
              ("exact match gain", decision.em_boot, decision.em_gain, decision.em_ci))
    for ax, (title, boot, gain, ci) in zip(axes, panels):
        if boot is not None and len(boot):
            ax.hist(boot, bins=60, color="tab:blue", alpha=0.7)
        ax.axvspan(ci[0], ci[1], color="tab:orange", alpha=0.2, label=f"{CONFIDENCE:.0%} CI")
        ax.axvline(gain, color="tab:orange", label=f"mean {gain:+.4f}")
        ax.axvline(0.0, color="black", linestyle="--", linewidth=1, label="no change")
        ax.set_title(f"{title} [{ci[0]:+.3f}, {ci[1]:+.3f}]")
        ax.set_xlabel("candidate − in service (paired bootstrap)")
        ax.legend(fontsize=7)
    verdict = "PROMOTE" if decision.promote else "keep the model in service"
    fig.suptitle(f"{verdict} — {decision.n_items} paired items", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
