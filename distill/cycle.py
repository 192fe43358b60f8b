"""One distillation cycle, stage by stage, each stage leaving a file the next one reads.

    split → harvest → sample → train → export → evaluate → register (→ promote)

A cycle works in `$STROP_HOME/distill/<repo>/<cycle id>/`; `state.json` names the last stage that
finished. A killed cycle (kill -9 included) is resumed by the next run: finished stages are skipped,
sampling continues from its JSONL, training from its last checkpoint, and the export is rewritten
(it is atomic). The registry and the served model change only through atomic operations at the end.
Cycles never overlap (distill/lock.py), and a cycle is skipped when neither the repository nor the
completion log changed since the last one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from core.completion_log import open_log
from core.paths import strop_home
from core import git as gitmod
from core import settings
from core.completion import PromptSettings
from core.errors import StropError
from core.log_bundle import Bundle, read_bundle, row_id
from core.secrets import redact
from core.models import resolve

from .atomic import write_json_atomic
from .evaluate import EvalConfig, compare, write_report
from .harvest import HarvestConfig, count_by_kind, harvest
from .lock import CycleLock
from .mix import MixConfig, training_examples
from .records import EvalItem, LoggedContext, Prompt, read_jsonl, write_jsonl
from core.registry import repo_key

from .registry import Registry
from .sample import Sample, SampleConfig, repository_targets, sample
from .split import SplitConfig, TrainText, split_repo

log = logging.getLogger("strop.distill")  # progress: distill/cli.py prints it as "strop distill: ..."

ADAPTER_NAME = "adapter.gguf"


@dataclass(frozen=True)
class CycleConfig:
    base_model: Path | None = None  # default: the model in service for the repository
    max_prompts: int = 2000
    max_eval_items: int = 300  # validation + test; the split's validation_frac divides them
    quantization: str = "Q8_0"  # Q8_0 | Q4_K_M
    export_adapter: bool = True  # also the LoRA alone as GGUF (a few MiB; applies on the parent GGUF)
    promote: bool = True  # False: register the candidate and report, but never promote
    split: SplitConfig = field(default_factory=SplitConfig)
    harvest: HarvestConfig = field(default_factory=HarvestConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    mix: MixConfig = field(default_factory=MixConfig)  # what the LoRA learns from (distill/mix.py)
    train: object = None  # distill.train.TrainConfig (imported lazily: torch)
    eval: EvalConfig = field(default_factory=EvalConfig)
    prompt: PromptSettings = field(default_factory=PromptSettings)  # the [prompt] section serving reads too


@dataclass
class CycleOutcome:
    cycle_dir: Path
    skipped: bool = False
    promoted: bool = False
    version: str | None = None
    reasons: list[str] = field(default_factory=list)
    seconds_by_stage: dict = field(default_factory=dict)


def repo_stamp(repo: Path) -> dict:
    """What the skip check compares: the commit, uncommitted changes, and the log's activity."""
    def git(*args) -> str:
        return gitmod.output(repo, *args) or ""

    dirty = hashlib.sha256(git("status", "--porcelain").encode()).hexdigest()[:16]
    rows, newest = open_log().change_stamp(str(repo))
    return {"head": git("rev-parse", "HEAD"), "dirty": dirty, "log_rows": rows, "log_newest": newest}


def _logged_contexts(repo: Path, bundles: tuple[Bundle, ...] = ()) -> tuple[list[LoggedContext], dict[str, int]]:
    """The local log's accepted completions, then the team bundles' (`--log`), each completion once (by
    the content hash of its scrubbed path, prefix, suffix and completion); and how many each bundle gave."""
    out, seen = [], set()
    for row in open_log().accepted_contexts(str(repo)):
        accepted = row["accepted_chars"] or len(row["completion"])
        seen.add(row_id(row["path"], *(redact(row[k])[0] for k in ("prefix", "suffix")),
                        redact(row["completion"][:accepted])[0]))
        out.append(LoggedContext(path=row["path"], language=row["language"], prefix=row["prefix"],
                                 suffix=row["suffix"], completion=row["completion"][:accepted],
                                 retained_chars=row["retained_chars"] if row["retained_chars"] is not None else accepted,
                                 accepted_chars=accepted, snippets=tuple(json.loads(row["snippets"] or "[]"))))
    counts: dict[str, int] = {}
    for bundle in bundles:
        counts[bundle.id] = 0
        for row in bundle.rows:
            if row["id"] in seen:
                continue
            seen.add(row["id"])
            counts[bundle.id] += 1
            out.append(LoggedContext(path=row["path"], language=row["language"], prefix=row["prefix"],
                                     suffix=row["suffix"], completion=row["completion"],
                                     retained_chars=row["retained_chars"], accepted_chars=row["accepted_chars"],
                                     snippets=tuple(tuple(s) for s in row["snippets"]), bundle=bundle.id))
    return out, counts


class Cycle:
    def __init__(self, repo: Path, cfg: CycleConfig, *, progress: bool = True, bundles: tuple[Path, ...] = ()) -> None:
        self.repo = repo.resolve()
        self.cfg = cfg
        self.progress = progress
        self.key = repo_key(self.repo)
        self.bundles = tuple(read_bundle(p, self.key) for p in bundles)  # team signals: `--log BUNDLE`
        self.root = strop_home() / "distill" / self.key
        self.root.mkdir(parents=True, exist_ok=True)
        self.registry = Registry()

    # --- bookkeeping ----------------------------------------------------------------------------
    def _open_cycle(self) -> Path:
        """The unfinished cycle to resume, or a new one."""
        for d in sorted(self.root.glob("cycle-*"), reverse=True):
            state = self._state(d)
            if state.get("stage") not in ("register", "failed"):
                log.info(f"resuming {d.name} after stage {state.get('stage') or '(none)'}")
                return d
            break
        d = self.root / time.strftime("cycle-%Y%m%dT%H%M%S")
        d.mkdir()
        write_json_atomic(d / "state.json", {"stage": None, "started_at": time.time()})
        return d

    @staticmethod
    def _state(d: Path) -> dict:
        try:
            return json.loads((d / "state.json").read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    def _done(self, d: Path, stage: str, **extra) -> None:
        state = self._state(d)
        state.update(stage=stage, **extra)
        write_json_atomic(d / "state.json", state)

    # --- the cycle --------------------------------------------------------------------------------
    def run(self, *, force: bool = False) -> CycleOutcome:
        with CycleLock.for_repo(self.key):
            stamp = repo_stamp(self.repo)
            if self.bundles:  # new team bundles are new data
                stamp["log_bundles"] = sorted(b.id for b in self.bundles)
            last = self.root / "last_stamp.json"
            unfinished = any(self._state(d).get("stage") not in ("register", "failed")
                             for d in sorted(self.root.glob("cycle-*"))[-1:])
            if not force and not unfinished and last.exists() and json.loads(last.read_text()) == stamp:
                log.info("nothing changed since the last cycle (repository and log): skipped; --force runs anyway")
                return CycleOutcome(self.root, skipped=True)
            d = self._open_cycle()
            outcome = self._run_stages(d)
            write_json_atomic(last, stamp)
            return outcome

    def _run_stages(self, d: Path, stages: tuple[Stage, ...] | None = None) -> CycleOutcome:
        """Run `stages` (STAGES) from where cycle `d` stands; state.json records each one done."""
        stages = STAGES if stages is None else stages
        run = _Run(self, d)
        state = self._state(d)
        names = [s.name for s in stages]
        start = names.index(state["stage"]) + 1 if state.get("stage") in names else 0
        for i, stage in enumerate(stages[:start]):  # finished, but a file it left is gone: redo from it
            if missing := run.missing(stage):
                log.info(f"{missing[0]} of the finished {stage.name} stage is gone: redoing from {stage.name}")
                start = i
                break
        if start < len(stages) and stages[start].resume_from:
            start = names.index(stages[start].resume_from)
        timings = state.get("seconds", {})
        for stage in stages[start:]:
            t0 = time.perf_counter()
            stage.run(run)
            if missing := run.missing(stage):
                raise RuntimeError(f"the {stage.name} stage finished without writing {', '.join(missing)}")
            timings[stage.name] = round(time.perf_counter() - t0, 2)
            self._done(d, stage.name, seconds=timings, **run.state)
        run.outcome.seconds_by_stage = timings
        return run.outcome


# --- the stages -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """One step of a cycle. `run` reads earlier stages' files in the cycle directory and writes
    `outputs` there (names relative to it; "{quantization}" is the cycle's, lower case)."""

    name: str
    run: Callable[["_Run"], None]
    outputs: tuple[str, ...] = ()
    resume_from: str | None = None  # a resume starts there: this stage needs what it keeps in memory


class _Run:
    """What the stages of one cycle share: its directory and settings, the model in service, the
    outcome, extra state.json fields, and what the split hands the harvest in memory."""

    def __init__(self, cycle: Cycle, d: Path) -> None:
        self.d, self.cfg, self.repo, self.key, self.registry = d, cycle.cfg, cycle.repo, cycle.key, cycle.registry
        self.progress = cycle.progress
        self.serving = resolve(cycle.cfg.base_model, cycle.repo)
        self.base_gguf = Path(self.serving.path)
        self.outcome = CycleOutcome(d)
        self.state: dict = {}
        self.split = None  # split_repo's result and the logged contexts it was made with
        self.logged: list[LoggedContext] = []
        self.bundles = cycle.bundles
        self._retriever = None

    def path(self, name: str) -> Path:
        return self.d / name.format(quantization=self.cfg.quantization.lower())

    @property
    def candidate(self) -> Path:
        return self.path(CANDIDATE)

    def retriever(self):
        """The cycle's repository retrieval (`repository_retriever`), made once."""
        if self._retriever is None:
            self._retriever = repository_retriever(self.repo, self.cfg, self.split)
        return self._retriever

    def missing(self, stage: Stage) -> list[str]:
        return [name for name in stage.outputs if not self.path(name).exists()]


def repository_retriever(repo: Path, cfg: CycleConfig, split=None):
    """Repository retrieval for sampling and evaluation, over the split's training side only (no
    held-out line can reach a prompt); None when `[prompt] retrieval_k = 0`."""
    if cfg.prompt.retrieval_k <= 0:
        return None
    from core.repo_context import RetrievalSettings, Retriever, offline_index

    split = split or split_repo(repo, cfg.split)  # deterministic: a resume redoes it
    index = offline_index(repo, split.train_files, cfg.split.files.exclude_globs)
    return Retriever(lambda: index, RetrievalSettings(k=cfg.prompt.retrieval_k))


def _split(run: _Run) -> None:
    cfg = run.cfg
    log.info(f"splitting {run.repo} (held-out evaluation data first)")
    split = run.split = split_repo(run.repo, cfg.split)
    logged, bundle_counts = _logged_contexts(run.repo, run.bundles)
    run.logged = logged
    # Accepted completions train as they are: held-out code they contain is not held out.
    seen = TrainText(ctx.completion for ctx in logged)
    val_all, test_all = split.validation(), split.test()
    val, test = unseen(val_all, seen), unseen(test_all, seen)
    stats = dict(split.stats, dropped_seen_in_log=len(val_all) + len(test_all) - len(val) - len(test))
    val = val[: int(cfg.max_eval_items * split.validation_frac)]
    test = test[: cfg.max_eval_items - len(val)]
    write_jsonl(run.d / "validation.jsonl", val)
    write_jsonl(run.d / "test.jsonl", test)
    write_json_atomic(run.d / "split.json", {"method": split.method, "cutoff_commit": split.cutoff_commit,
                                             "validation": len(val), "test": len(test), "stats": stats,
                                             "log_bundles": bundle_counts})
    log.info(f"split: {split.method}, {len(val)} validation / {len(test)} test items")


def _harvest(run: _Run) -> None:
    # The split's training files and the log it checked held-out items against: so the harvest
    # resumes from the split (which is deterministic).
    prompts = harvest(run.repo, run.split.train_files, run.cfg.harvest, logged=run.logged)
    prompts = _cap(prompts, run.cfg.max_prompts, run.cfg.harvest.seed)
    write_jsonl(run.d / "prompts.jsonl", prompts)
    log.info(f"harvest: {len(prompts)} prompts {count_by_kind(prompts)}")


def _sample(run: _Run) -> None:
    """The mix's model-made data: SSD samples ([mix] ssd > 0), and the repository targets laid out as
    the samples are ([mix] repository > 0)."""
    cfg, mix = run.cfg.sample, run.cfg.mix
    prompts = read_jsonl(run.d / "prompts.jsonl", Prompt)
    common = dict(prompt=run.cfg.prompt, repo_name=run.repo.name, retriever=run.retriever())
    n_targets = 0
    if mix.repository > 0:
        n_targets = repository_targets(run.base_gguf, prompts, run.d / "targets.jsonl", cfg, **common)
        log.info(f"repository targets: {n_targets} real completions at the repository prompts")
    else:
        write_jsonl(run.d / "targets.jsonl", [])
    if mix.ssd > 0:
        log.info(f"sampling {len(prompts)} prompts × {cfg.n_per_prompt} from {run.serving.version} "
                 f"(T={cfg.temperature}, top-k {cfg.top_k}, top-p {cfg.top_p})")
        stats = sample(run.base_gguf, prompts, run.d / "samples.jsonl", cfg, progress=run.progress, **common).as_dict()
        log.info(f"sample: kept {stats['kept']}, dropped {stats['dropped']}, {stats['tokens_per_s']:.1f} tokens/s")
    else:
        write_jsonl(run.d / "samples.jsonl", [])
        stats = {"prompts": len(prompts), "kept": 0, "skipped": "[mix] ssd = 0"}
        log.info("sampling skipped: [mix] ssd = 0")
    write_json_atomic(run.d / "sample_stats.json", dict(stats, repository_targets=n_targets))


def _train(run: _Run) -> None:
    from .launch import run_train
    from .train import TrainConfig

    mix = run.cfg.mix
    mixed = training_examples(read_jsonl(run.d / "samples.jsonl", Sample), read_jsonl(run.d / "prompts.jsonl", Prompt),
                              run.repo.name, mix, read_jsonl(run.d / "targets.jsonl", Sample))
    n = mixed.counts
    log.info(f"training a LoRA from {run.base_gguf.name} on {n['ssd']} own samples (×{mix.ssd}), "
             f"{n['repository']} repository targets (×{mix.repository}) and {n['log']} accepted completions "
             f"(×{mix.log})")
    if not mixed.examples:
        raise StropError("the distillation mix gave no training examples: no samples, repository targets or "
                         "accepted completions. Check [mix] (a source weighted 0 is off) and the harvest's prompts.")
    result = run_train(run.base_gguf, mixed.examples, run.d / "train", run.cfg.train or TrainConfig(),
                       progress=run.progress)
    write_json_atomic(run.d / "train.json", dict(result.to_json(), mix=mixed.manifest(mix)))


def _export(run: _Run) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .export import export_gguf, roundtrip_check
    from .quantize import quantize_gguf

    d, cfg = run.d, run.cfg
    merged = d / "train" / "merged"
    model = AutoModelForCausalLM.from_pretrained(merged, dtype="float32")
    tok = AutoTokenizer.from_pretrained(merged)
    f16 = d / "candidate-f16.gguf"
    log.info("exporting the merged model to GGUF")
    export_gguf(model, tok, f16, dtype="f16", tokenizer_source_gguf=run.base_gguf,
                metadata={"strop.parent": run.serving.version, "strop.cycle": d.name, "strop.repo": run.key})
    probes = [s.prefix[-400:] for name in ("samples.jsonl", "targets.jsonl")
              for s in read_jsonl(d / name, Sample) if s.prefix.strip()][:4]
    check = roundtrip_check(model, tok, f16, probes or ["def main():\n    return "])
    write_json_atomic(d / "export.json", dataclasses.asdict(check))
    if not check.passed:
        raise StropError(f"the exported GGUF disagrees with the PyTorch model ({check}); not promoting.")
    quantize_gguf(f16, run.candidate, cfg.quantization)
    f16.unlink(missing_ok=True)
    if cfg.export_adapter:
        from .export_adapter import export_adapter_gguf

        export_adapter_gguf(d / "train" / "adapter", model.config, d / ADAPTER_NAME)


def _evaluate(run: _Run) -> None:
    val = read_jsonl(run.d / "validation.jsonl", EvalItem)
    test = read_jsonl(run.d / "test.jsonl", EvalItem)
    base_t = float(run.serving.decoding.get("temperature", 0.0))
    log.info(f"evaluating on {len(test)} held-out items (T_eval tuned on {len(val)} validation items)")
    control = None
    if run.cfg.eval.precision_control:
        from .quantize import precision_control

        control = precision_control(run.base_gguf, run.cfg.quantization, run.path("control-{quantization}.gguf"))
        if control is not None:
            log.info(f"the base, re-quantised to {run.cfg.quantization} without training, is scored too: "
                     "the candidate must beat it, not only the export's precision")
    try:
        verdict = compare(run.candidate, run.base_gguf, val, test, run.cfg.eval, prompt=run.cfg.prompt,
                          repo_name=run.repo.name, retriever=run.retriever(), baseline_temperature=base_t,
                          progress=run.progress, control=control)
    finally:
        if control is not None:  # a copy of the base: never left behind, also when scoring fails
            control.unlink(missing_ok=True)
    write_report(verdict, run.d)


def _register(run: _Run) -> None:
    """A new registry version with its lineage, data, settings and report; promoted if the gate says so."""
    d, cfg, serving = run.d, run.cfg, run.serving

    def read(name: str) -> dict:
        return json.loads((d / name).read_text())

    report, train_meta = read("report.json"), read("train.json")
    manifest = {
        "name": f"{run.repo.name}-distilled",
        "source": "distill",
        "base": serving.name, "parent": serving.version, "cycle": d.name,
        "data": manifest_data(d),
        "hyperparameters": {"sample": dataclasses.asdict(cfg.sample),
                            "train": {k: v for k, v in train_meta.items() if k not in ("losses", "mix")},
                            "quantization": cfg.quantization},
        "metrics": {"candidate": report["candidate"], "baseline": report["baseline"]},
        "decoding": {"temperature": report["t_eval"], "top_k": cfg.eval.top_k, "top_p": cfg.eval.top_p},
        "decision": {"promote": report["promote"], "reasons": report["reasons"]},
    }
    if (d / ADAPTER_NAME).exists():
        manifest["adapter"] = {"file": ADAPTER_NAME, "applies_to": serving.version,
                               "usage": "llama.cpp --model <parent GGUF> --lora adapter.gguf"}
    reports = [d / n for n in ("report.json", "report.txt", "report.png", "gate.png", ADAPTER_NAME) if (d / n).exists()]
    entry = run.registry.add_version(run.key, run.candidate, manifest, extra_files={p.name: p for p in reports})
    outcome = run.outcome
    outcome.version, outcome.reasons = entry.version, report["reasons"]
    if report["promote"] and cfg.promote:
        run.registry.promote(run.key, entry.version)
        outcome.promoted = True
        log.info(f"promoted {entry.version}: " + "; ".join(report["reasons"]))
        _publish(run, entry)
    else:
        log.info(f"kept {serving.version} in service; {entry.version} registered, not promoted: "
                 + "; ".join(report["reasons"]))
    run.candidate.unlink(missing_ok=True)  # the registry holds its copies
    (d / ADAPTER_NAME).unlink(missing_ok=True)
    run.state.update(version=entry.version, promoted=outcome.promoted)


def _publish(run: _Run, entry) -> None:
    """[registry] publish = true: a promoted version goes to the team's shared directory too."""
    from core.team_registry import RegistrySettings, TeamRegistry

    team = RegistrySettings.configured()
    if team.publish and team.url:
        final = TeamRegistry(team.url, run.key, run.registry).publish(entry)
        log.info(f"published {entry.version} to the team registry: {final}")


def manifest_data(d: Path) -> dict:
    """The data counts of a cycle's manifest: the split, the prompts, the samples, the mix (its weights
    and examples per source), and the logged completions each team bundle gave (`log_bundles`)."""
    split = json.loads((d / "split.json").read_text())
    samples = d / "sample_stats.json"
    train = d / "train.json"
    return {"split": split, "prompts": len(read_jsonl(d / "prompts.jsonl", Prompt)),
            "samples": json.loads(samples.read_text()) if samples.exists() else None,
            "mix": json.loads(train.read_text()).get("mix") if train.exists() else None,
            "log_bundles": split.get("log_bundles", {})}


CANDIDATE = "candidate-{quantization}.gguf"
# The cycle, in order. `outputs` are what later stages read: a finished stage whose outputs are gone
# is run again on resume. The export's files go when the register stage has copied them.
STAGES: tuple[Stage, ...] = (
    Stage("split", _split, ("validation.jsonl", "test.jsonl", "split.json")),
    Stage("harvest", _harvest, ("prompts.jsonl",), resume_from="split"),
    Stage("sample", _sample, ("samples.jsonl", "targets.jsonl", "sample_stats.json")),
    Stage("train", _train, ("train.json", "train/merged", "train/adapter")),
    Stage("export", _export, (CANDIDATE, "export.json")),
    Stage("evaluate", _evaluate, ("report.json", "report.txt", "report.png")),
    Stage("register", _register),
)
def unseen(items: list[EvalItem], seen: TrainText) -> list[EvalItem]:
    """The evaluation items whose target is not in `seen` (text that training learns verbatim)."""
    return [it for it in items if it.target not in seen]


def _cap(prompts: list[Prompt], limit: int, seed: int) -> list[Prompt]:
    """At most `limit` prompts: the logged ones first (each carries a verified completion), then a
    seeded draw of the repository's."""
    logged = [p for p in prompts if p.source == "log"]
    if len(prompts) <= limit:
        return prompts
    ranked = sorted((p for p in prompts if p.source != "log"),
                    key=lambda p: hashlib.sha256(f"{seed}:{p.id}".encode()).hexdigest())
    keep = {p.id for p in logged[:limit]} | {p.id for p in ranked[: max(0, limit - len(logged))]}
    return [p for p in prompts if p.id in keep]


# --- configuration --------------------------------------------------------------------------------
def load_config(path: Path | None, overrides: list[str], exclude: list[str] = ()) -> CycleConfig:
    """The configuration tree's distillation sections (core.settings: defaults < $STROP_HOME/config.toml
    < --config FILE < --set < --exclude): [cycle], [prompt] (shared with serving), [files] (which
    repository files count, for both the held-out split and the prompts: exclude_globs,
    max_file_bytes, languages), [split], [harvest], [sample], [train], [eval]. [serve] is serving's."""
    from .train import TrainConfig

    cfg = CycleConfig(train=TrainConfig())
    values = settings.merge(settings.read_toml(), settings.read_toml(path, required=True) if path else {},
                            settings.parse_overrides(overrides))
    files = cfg.split.files
    for section, kv in values.items():
        if section in ("serve", "log", "registry"):  # serving's / the team registry's sections of the same file
            continue
        if section == "cycle":
            cfg = settings.apply(cfg, kv, "cycle", skip=_SECTIONS)
        elif section == "files":
            files = settings.apply(files, kv, "files")
        elif section in _SECTIONS:
            if "files" in kv:
                raise StropError(f"{section}.files: set file selection in the [files] section (it applies to "
                                 "the split and the prompts alike)")
            cfg = dataclasses.replace(cfg, **{section: settings.apply(getattr(cfg, section), kv, section)})
        else:
            raise StropError(f"unknown configuration section [{section}]; known: serve, log, cycle, files, "
                             f"{', '.join(_SECTIONS)}")
    files = dataclasses.replace(files, exclude_globs=tuple(files.exclude_globs) + tuple(exclude))
    return dataclasses.replace(cfg, split=dataclasses.replace(cfg.split, files=files),
                               harvest=dataclasses.replace(cfg.harvest, files=files))


_SECTIONS = ("prompt", "split", "harvest", "sample", "mix", "train", "eval")


# --- CLI entry points ---------------------------------------------------------------------------------
def main(args) -> int:
    from . import launch

    if launch.is_follower():  # a non-zero rank of an external accelerate launch / torchrun: train only
        return launch.follow()
    try:
        return _main(args)
    finally:
        launch.release()


def _main(args) -> int:
    cfg = load_config(args.config, args.set, args.exclude)
    repo = args.repo.resolve()
    if not repo.is_dir():
        raise StropError(f"--repo {args.repo}: not a directory")
    cycle = Cycle(repo, cfg, bundles=tuple(getattr(args, "log", ())))
    if args.every:
        log.info(f"running a cycle every {args.every:.0f}s; Ctrl-C stops between cycles")
        while True:
            try:
                cycle.run(force=args.force)
            except StropError as err:  # one failed cycle must not end the schedule
                log.error(f"cycle failed: {err}")
            time.sleep(args.every)
    outcome = cycle.run(force=args.force)
    if not outcome.skipped:
        log.info(f"cycle done in {sum(outcome.seconds_by_stage.values()):.0f}s: {outcome.seconds_by_stage}")
    return 0


def eval_main(args) -> int:
    from .split import split_repo as _split

    cfg = load_config(None, [])
    repo = args.repo.resolve()
    against = args.against or Path(resolve(None, repo).path)
    split = _split(repo, cfg.split)
    val = split.validation()[: int(args.limit * split.validation_frac)]
    test = split.test()[: args.limit - len(val)]
    verdict = compare(args.model, against, val, test, cfg.eval, prompt=cfg.prompt, repo_name=repo.name)
    out = strop_home() / "eval" / time.strftime("%Y%m%dT%H%M%S")
    write_report(verdict, out)
    if args.json:
        print((out / "report.json").read_text())
    else:
        print((out / "report.txt").read_text() + f"(report: {out})")
    return 0
