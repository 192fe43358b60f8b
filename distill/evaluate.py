"""Evaluate a model on held-out code of the repository, under the decoding strop serves with.

Metrics: exact match and edit similarity of the predicted line (next-line and single-line FIM items)
or block (FIM block items), plus perplexity of the held-out targets. The serving temperature T_eval
(with top-k/top-p) is tuned on the validation slice only, then the test slice is scored once.
A candidate is promoted only when it beats the model in service by a margin and no guard metric
regresses (see `gate`).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core import context as ctxmod
from core.completion import CompletionPath, Outcome, PromptSettings, position_of
from core.decode import InProcessEngine, Sampling
from core.llama_model import tokenize_pieces
from core.metrics import edit_similarity
from core.models import ResolvedModel

from .atomic import atomic_output, write_json_atomic, write_text_atomic
from .records import EvalItem
from .sample import seed_for


@dataclass(frozen=True)
class EvalConfig:
    t_eval_grid: tuple[float, ...] = (0.0, 0.3, 0.6, 0.9)
    top_k: int = 20
    top_p: float = 0.95
    max_new_tokens: int = 64
    max_new_tokens_line: int = 32
    time_cap_ms: int = 0  # 0: none; scores must not depend on how busy the machine is
    heal: bool = True  # token healing at the cursor, as `strop serve` decodes ([serve] heal)
    n_ctx: int = 4096  # the [prompt] budget plus the completion
    seed: int = 1234
    margin: float = 0.005  # T_eval: a higher temperature must beat a lower one by this much on validation
    # The gate (distill/gate.py): paired bootstrap over the test items; the lower end of the 95 %
    # interval of the edit-similarity gain must exceed min_es_gain.
    min_items: int = 200  # paired test items the gate wants (all the repository has, when fewer)
    min_es_gain: float = 0.0
    guard_exact_match_drop: float = 0.02  # largest tolerated drop in exact match (and no significant loss)
    humaneval_tasks: int = 100  # HumanEval single-line infilling guard: tasks (0: off); pass@1 may fall ≤ 1 point
    humaneval_max_drop: float = 1.0
    # The candidate must also beat the base re-quantised to its type without training, when the base
    # has another type (bench_mix, encode/httpx: a LoRA candidate's whole +1.3 over a Q4_1 base was
    # the Q8_0 export's; the untrained control scored the same and the gate would have promoted it).
    precision_control: bool = True
    guard_perplexity_rise: float = 0.10  # largest tolerated relative rise in held-out perplexity
    perplexity: bool = True


def comparable(item: EvalItem, prediction: str) -> tuple[str, str]:
    """What is compared: the first line for line items, the whole block for block items."""
    if item.kind == "fim_block":
        return prediction.strip(), item.target.strip()
    return prediction.split("\n", 1)[0].strip() if prediction.strip("\n") else "", item.target.split("\n", 1)[0].strip()


@dataclass
class Scores:
    n: int = 0
    exact_match: float = 0.0
    edit_similarity: float = 0.0
    perplexity: float | None = None
    by_kind: dict = field(default_factory=dict)
    seconds: float = 0.0
    per_item: list = field(default_factory=list)  # [{id, exact_match, edit_similarity}] for the paired gate


class Evaluator:
    """One loaded model; predicts and scores held-out items exactly as `strop serve` would."""

    def __init__(self, model_path: Path, cfg: EvalConfig, *, prompt: PromptSettings = PromptSettings(),
                 repo_name: str = "", retriever=None) -> None:
        self.cfg = cfg
        self.path = Path(model_path)
        self.engine = InProcessEngine(n_ctx=cfg.n_ctx, n_threads=os.cpu_count() or 1, n_gpu_layers=-1)
        self.engine.load(ResolvedModel(self.path, self.path.stem, self.path.stem, "flag"))
        self.model = self.engine.model
        self.completion = CompletionPath(self.model.fim, self.engine.count_tokens, prompt, cfg, repo_name=repo_name,
                                         retriever=retriever)
        self._ppl_llm = None

    def close(self) -> None:
        self.engine.close()
        if self._ppl_llm is not None:
            self._ppl_llm.close()

    @staticmethod
    def position(item: EvalItem):
        return position_of(item.prefix, item.suffix, path=item.path, language=item.language, snippets=item.snippets)

    def _context(self, item: EvalItem) -> ctxmod.Context:
        return self.completion.context(self.position(item))

    def outcome(self, item: EvalItem, temperature: float) -> Outcome:
        """The served path's whole outcome for an item (context, generation, hygiene rules applied)."""
        multiline = False if item.kind == "fim_line" else None  # None: as the served context says
        return self.completion.run(self.engine, self.position(item), key="eval", multiline=multiline,
                                   sampling=Sampling(temperature, self.cfg.top_k, self.cfg.top_p,
                                                     seed=seed_for(self.cfg.seed, item.id, 0)))

    def target_nll(self, item: EvalItem) -> tuple[float, int]:
        """Summed negative log-likelihood of the target tokens after the served prompt, and their count."""
        import llama_cpp
        import numpy as np

        if self._ppl_llm is None:
            self._ppl_llm = llama_cpp.Llama(model_path=str(self.path), n_ctx=self.cfg.n_ctx, logits_all=True,
                                            n_gpu_layers=-1, verbose=False)
        llm = self._ppl_llm
        ctx = self._context(item)
        prompt = tokenize_pieces(self.model, ctx.pieces)
        target = llm.tokenize(item.target.encode(), add_bos=False, special=False)[:64]
        if not target or not prompt:  # no target, or nothing to condition the first token on
            return 0.0, 0
        ids = (prompt + target)[-(self.cfg.n_ctx - 1):]
        llm.reset()
        llm.eval(ids)
        logits = np.asarray(llm.scores[: len(ids)], dtype=np.float64)
        start = len(ids) - len(target)
        rows = logits[start - 1: len(ids) - 1]
        rows = rows - rows.max(axis=1, keepdims=True)
        logp = rows - np.log(np.exp(rows).sum(axis=1, keepdims=True))
        nll = -float(sum(logp[i, tok] for i, tok in enumerate(target)))
        return nll, len(target)

    def score(self, items: list[EvalItem], temperature: float, *, perplexity: bool = False,
              progress: bool = False, details: bool = False) -> Scores:
        """`details`: each per-item row also holds the prediction, the hygiene rules applied, the
        generation's stop reason and its text before hygiene (for diagnosis)."""
        from tqdm import tqdm

        t0 = time.perf_counter()
        em = es = 0.0
        nll = ntok = 0
        kinds: dict[str, list[float]] = {}
        per_item = []
        for item in tqdm(items, desc=f"eval {self.path.name} T={temperature}", disable=not progress,
                         dynamic_ncols=True):
            res = self.outcome(item, temperature)
            pred, target = comparable(item, res.text)
            hit, sim = float(pred == target), edit_similarity(pred, target)
            em += hit
            es += sim
            row = {"id": item.id, "exact_match": hit, "edit_similarity": sim}
            if details:
                gen = res.generation
                row |= {"prediction": pred, "rules": list(res.cleaned.rules),
                        "stop": gen.stop_reason if gen else None, "raw_text": gen.text if gen else None}
            per_item.append(row)
            k = kinds.setdefault(item.kind, [0, 0.0, 0.0])
            k[0] += 1
            k[1] += hit
            k[2] += sim
            if perplexity:
                a, b = self.target_nll(item)
                nll += a
                ntok += b
        n = max(1, len(items))
        return Scores(
            n=len(items), exact_match=em / n, edit_similarity=es / n,
            perplexity=math.exp(nll / ntok) if perplexity and ntok else None,
            by_kind={k: {"n": v[0], "exact_match": v[1] / v[0], "edit_similarity": v[2] / v[0]} for k, v in kinds.items()},
            seconds=time.perf_counter() - t0, per_item=per_item)

    def tune_temperature(self, validation: list[EvalItem], progress: bool = False) -> tuple[float, dict]:
        """T_eval on the validation slice (see `pick_temperature`), and the whole curve."""
        curve = {temp: self.score(validation, temp, progress=progress).edit_similarity for temp in self.cfg.t_eval_grid}
        return pick_temperature(curve, self.cfg.margin), curve


def pick_temperature(curve: dict[float, float], margin: float) -> float:
    """The lowest temperature whose validation edit similarity is within `margin` of the best one.

    A higher temperature must beat a lower one by the same margin a candidate must beat the model in
    service by: on a validation slice of tens of items, smaller differences are noise, and decoding
    closer to greedy is the steadier choice to ship. A negative margin (a gate told to admit any
    candidate) asks for no tolerance here: the best temperature wins, ties to the lower one.
    """
    best = max(curve.values())
    return min(t for t, score in curve.items() if score >= best - max(margin, 0.0))


@dataclass
class Verdict:
    promote: bool
    reasons: list[str]
    candidate: dict
    baseline: dict
    candidate_greedy: dict
    baseline_greedy: dict
    t_eval: float
    t_eval_curve: dict
    baseline_t: float
    config: dict
    gate: dict = field(default_factory=dict)  # distill.gate.Decision: gains with their 95 % intervals, guards


def gate(cand: Scores, base: Scores, cfg: EvalConfig, *, guards=(), available_items: int | None = None):
    """The promotion decision (distill.gate.decide) on the paired per-item test scores, with the
    held-out perplexity as one more guard."""
    from .gate import GuardCheck, decide

    checks = list(guards)
    if cand.perplexity is not None and base.perplexity is not None:
        rose = cand.perplexity > base.perplexity * (1 + cfg.guard_perplexity_rise)
        checks.append(GuardCheck("held-out perplexity", not rose,
                                 f"{base.perplexity:.3f} → {cand.perplexity:.3f} (may rise ≤ {cfg.guard_perplexity_rise:.0%})",
                                 base.perplexity, cand.perplexity))
    return decide(base.per_item, cand.per_item, min_items=cfg.min_items, available_items=available_items,
                  guards=checks, max_em_drop=cfg.guard_exact_match_drop, min_es_gain=cfg.min_es_gain)


def precision_guard(control: Path | None, cand: Scores, test: list[EvalItem], cfg: EvalConfig, *,
                    prompt: PromptSettings, repo_name: str, retriever, temperature: float, progress: bool = False):
    """Does the candidate beat the untrained base at its own quantisation (the paired ES interval's
    lower bound above `min_es_gain`, EM as the gate reads it)? None without a control."""
    if control is None:
        return None
    from .gate import GuardCheck, decide

    ev = Evaluator(control, cfg, prompt=prompt, repo_name=repo_name, retriever=retriever)
    try:
        ctrl = ev.score(test, temperature, progress=progress)
    finally:
        ev.close()
    d = decide(ctrl.per_item, cand.per_item, min_items=1, max_em_drop=cfg.guard_exact_match_drop,
               min_es_gain=cfg.min_es_gain)
    return GuardCheck("gain over the base re-quantised like the candidate, untrained", d.promote,
                      f"edit similarity {ctrl.edit_similarity:.4f} → {cand.edit_similarity:.4f}, gain {d.es_gain:+.4f} "
                      f"[{d.es_ci[0]:+.4f}, {d.es_ci[1]:+.4f}]; exact match gain {d.em_gain:+.4f} "
                      f"[{d.em_ci[0]:+.4f}, {d.em_ci[1]:+.4f}]", ctrl.edit_similarity, cand.edit_similarity)


def humaneval_guard(candidate: Path, baseline: Path, cfg: EvalConfig, progress: bool = False):
    """The HumanEval single-line infilling guard (distill/humaneval.py), or None when switched off."""
    if cfg.humaneval_tasks <= 0:
        return None
    from .humaneval import guard_holds, load_tasks, run_guard, select_tasks

    tasks = select_tasks(load_tasks(), cfg.humaneval_tasks)
    return guard_holds(run_guard(baseline, tasks=tasks, progress=progress),
                       run_guard(candidate, tasks=tasks, progress=progress), max_drop_points=cfg.humaneval_max_drop)


def compare(candidate: Path, baseline: Path, validation: list[EvalItem], test: list[EvalItem],
            cfg: EvalConfig = EvalConfig(), *, prompt: PromptSettings = PromptSettings(), repo_name: str = "",
            baseline_temperature: float = 0.0, progress: bool = True, retriever=None,
            control: Path | None = None) -> Verdict:
    """Tune the candidate's T_eval on validation; score both on test; decide. `control`: the
    baseline re-quantised to the candidate's type without training (distill.quantize.precision_control);
    then the candidate must also beat it, so a gain that is only the export's precision is not
    credited to training."""
    ev = Evaluator(candidate, cfg, prompt=prompt, repo_name=repo_name, retriever=retriever)
    try:
        t_eval, curve = ev.tune_temperature(validation, progress=progress)
        cand = ev.score(test, t_eval, perplexity=cfg.perplexity, progress=progress)
        cand_greedy = cand if t_eval == 0.0 else ev.score(test, 0.0, progress=progress)
    finally:
        ev.close()
    eb = Evaluator(baseline, cfg, prompt=prompt, repo_name=repo_name, retriever=retriever)
    try:
        base = eb.score(test, baseline_temperature, perplexity=cfg.perplexity, progress=progress)
        base_greedy = base if baseline_temperature == 0.0 else eb.score(test, 0.0, progress=progress)
    finally:
        eb.close()
    guards = [g for g in (precision_guard(control, cand, test, cfg, prompt=prompt, repo_name=repo_name,
                                          retriever=retriever, temperature=baseline_temperature, progress=progress),
                          humaneval_guard(candidate, baseline, cfg, progress=progress)) if g is not None]
    decision = gate(cand, base, cfg, guards=guards, available_items=len(test))
    return Verdict(decision.promote, decision.reasons, asdict(cand), asdict(base), asdict(cand_greedy),
                   asdict(base_greedy), t_eval, {str(k): v for k, v in curve.items()}, baseline_temperature,
                   asdict(cfg), decision.to_json())


def write_report(verdict: Verdict, out_dir: Path) -> list[Path]:
    """report.json, report.txt and report.png (metrics side by side, and the T_eval curve)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    data = asdict(verdict)
    write_json_atomic(out_dir / "report.json", data)
    c, b = verdict.candidate, verdict.baseline
    lines = [
        f"decision: {'PROMOTE' if verdict.promote else 'keep the model in service'}",
        *[f"  - {r}" for r in verdict.reasons],
        f"held-out test items: {c['n']}",
        f"{'':28}{'candidate':>12}{'in service':>12}",
        f"{'T_eval (tuned on validation)':28}{verdict.t_eval:>12}{verdict.baseline_t:>12}",
        f"{'exact match':28}{c['exact_match']:>12.4f}{b['exact_match']:>12.4f}",
        f"{'edit similarity':28}{c['edit_similarity']:>12.4f}{b['edit_similarity']:>12.4f}",
        f"{'exact match (greedy)':28}{verdict.candidate_greedy['exact_match']:>12.4f}"
        f"{verdict.baseline_greedy['exact_match']:>12.4f}",
        f"{'edit similarity (greedy)':28}{verdict.candidate_greedy['edit_similarity']:>12.4f}"
        f"{verdict.baseline_greedy['edit_similarity']:>12.4f}",
        f"{'perplexity':28}{_f(c['perplexity']):>12}{_f(b['perplexity']):>12}",
        "validation edit similarity by T_eval: " + ", ".join(f"{k}: {v:.4f}" for k, v in verdict.t_eval_curve.items()),
    ]
    write_text_atomic(out_dir / "report.txt", "\n".join(lines) + "\n")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    names = ["exact match", "edit sim.", "EM greedy", "ES greedy"]
    cv = [c["exact_match"], c["edit_similarity"], verdict.candidate_greedy["exact_match"],
          verdict.candidate_greedy["edit_similarity"]]
    bv = [b["exact_match"], b["edit_similarity"], verdict.baseline_greedy["exact_match"],
          verdict.baseline_greedy["edit_similarity"]]
    xs = range(len(names))
    ax1.bar([x - 0.2 for x in xs], bv, 0.4, label="in service")
    ax1.bar([x + 0.2 for x in xs], cv, 0.4, label="candidate")
    ax1.set_xticks(list(xs), names)
    ax1.set_ylim(0, 1)
    ax1.legend()
    ax1.set_title("held-out test slice")
    temps = [float(k) for k in verdict.t_eval_curve]
    ax2.plot(temps, list(verdict.t_eval_curve.values()), marker="o")
    ax2.axvline(verdict.t_eval, linestyle="--", color="gray")
    ax2.set_xlabel("T_eval")
    ax2.set_ylabel("validation edit similarity")
    ax2.set_title("candidate T_eval tuning")
    fig.tight_layout()
    with atomic_output(out_dir / "report.png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    written = [out_dir / "report.json", out_dir / "report.txt", out_dir / "report.png"]
    if c.get("per_item") and b.get("per_item"):  # the gate's bootstrap distributions, with their intervals
        from .gate import decide, gate_plot

        cfg = verdict.config
        again = decide(b["per_item"], c["per_item"], min_items=cfg["min_items"], available_items=c["n"],
                       max_em_drop=cfg["guard_exact_match_drop"], min_es_gain=cfg["min_es_gain"])
        written.append(gate_plot(again, out_dir / "gate.png"))
    return written


def _f(v) -> str:
    return "-" if v is None else f"{v:.3f}"
