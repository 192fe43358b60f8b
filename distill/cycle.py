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
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.completion_log import open_log
from core.paths import strop_home
from core import git as gitmod
from core import settings
from core.completion import PromptSettings
from core.errors import StropError
from core.models import resolve

from .atomic import write_json_atomic
from .evaluate import EvalConfig, compare, write_report
from .harvest import HarvestConfig, count_by_kind, harvest
from .lock import CycleLock
from .records import EvalItem, LoggedContext, Prompt, read_jsonl, write_jsonl
from core.registry import repo_key

from .registry import Registry
from .sample import Sample, SampleConfig, sample
from .split import SplitConfig, TrainText, split_repo
from .tokenize import TrainExample

log = logging.getLogger(__name__)

STAGES = ("split", "harvest", "sample", "train", "export", "evaluate", "register")
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


def _say(msg: str) -> None:
    print(f"strop distill: {msg}", file=sys.stderr, flush=True)


def repo_stamp(repo: Path) -> dict:
    """What the skip check compares: the commit, uncommitted changes, and the log's activity."""
    def git(*args) -> str:
        return gitmod.output(repo, *args) or ""

    dirty = hashlib.sha256(git("status", "--porcelain").encode()).hexdigest()[:16]
    rows, newest = open_log().change_stamp(str(repo))
    return {"head": git("rev-parse", "HEAD"), "dirty": dirty, "log_rows": rows, "log_newest": newest}


def _logged_contexts(repo: Path) -> list[LoggedContext]:
    out = []
    for row in open_log().accepted_contexts(str(repo)):
        accepted = row["accepted_chars"] or len(row["completion"])
        out.append(LoggedContext(path=row["path"], language=row["language"], prefix=row["prefix"],
                                 suffix=row["suffix"], completion=row["completion"][:accepted],
                                 retained_chars=row["retained_chars"] if row["retained_chars"] is not None else accepted,
                                 accepted_chars=accepted, snippets=tuple(json.loads(row["snippets"] or "[]"))))
    return out


class Cycle:
    def __init__(self, repo: Path, cfg: CycleConfig, *, progress: bool = True) -> None:
        self.repo = repo.resolve()
        self.cfg = cfg
        self.progress = progress
        self.key = repo_key(self.repo)
        self.root = strop_home() / "distill" / self.key
        self.root.mkdir(parents=True, exist_ok=True)
        self.registry = Registry()

    # --- bookkeeping ----------------------------------------------------------------------------
    def _open_cycle(self) -> Path:
        """The unfinished cycle to resume, or a new one."""
        for d in sorted(self.root.glob("cycle-*"), reverse=True):
            state = self._state(d)
            if state.get("stage") not in ("register", "failed"):
                _say(f"resuming {d.name} after stage {state.get('stage') or '(none)'}")
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
            last = self.root / "last_stamp.json"
            unfinished = any(self._state(d).get("stage") not in ("register", "failed")
                             for d in sorted(self.root.glob("cycle-*"))[-1:])
            if not force and not unfinished and last.exists() and json.loads(last.read_text()) == stamp:
                _say("nothing changed since the last cycle (repository and log): skipped; --force runs anyway")
                return CycleOutcome(self.root, skipped=True)
            d = self._open_cycle()
            outcome = self._run_stages(d)
            write_json_atomic(last, stamp)
            return outcome

    def _run_stages(self, d: Path) -> CycleOutcome:
        cfg = self.cfg
        outcome = CycleOutcome(d)
        done = self._state(d).get("stage")
        reached = STAGES.index(done) + 1 if done in STAGES else 0
        serving = resolve(cfg.base_model, self.repo) if cfg.base_model else resolve(None, self.repo)
        base_gguf = Path(serving.path)
        timings = self._state(d).get("seconds", {})

        def stage(name: str) -> bool:
            return STAGES.index(name) >= reached

        def timed(name: str, t0: float) -> None:
            timings[name] = round(time.perf_counter() - t0, 2)
            self._done(d, name, seconds=timings)

        # 1+2. split and harvest (split is deterministic, so a resumed harvest recomputes it)
        if stage("split") or stage("harvest"):
            t0 = time.perf_counter()
            _say(f"splitting {self.repo} (held-out evaluation data first)")
            split = split_repo(self.repo, cfg.split)
            logged = _logged_contexts(self.repo)
            # Accepted completions train as they are: held-out code they contain is not held out.
            seen = TrainText(ctx.completion for ctx in logged)
            val_all, test_all = split.validation(), split.test()
            val, test = unseen(val_all, seen), unseen(test_all, seen)
            stats = dict(split.stats, dropped_seen_in_log=len(val_all) + len(test_all) - len(val) - len(test))
            val = val[: int(cfg.max_eval_items * split.validation_frac)]
            test = test[: cfg.max_eval_items - len(val)]
            write_jsonl(d / "validation.jsonl", val)
            write_jsonl(d / "test.jsonl", test)
            write_json_atomic(d / "split.json", {"method": split.method, "cutoff_commit": split.cutoff_commit,
                                                 "validation": len(val), "test": len(test), "stats": stats})
            _say(f"split: {split.method}, {len(val)} validation / {len(test)} test items")
            timed("split", t0)
            t0 = time.perf_counter()
            prompts = harvest(self.repo, split.train_files, cfg.harvest, logged=logged)
            prompts = _cap(prompts, cfg.max_prompts, cfg.harvest.seed)
            write_jsonl(d / "prompts.jsonl", prompts)
            _say(f"harvest: {len(prompts)} prompts {count_by_kind(prompts)}")
            timed("harvest", t0)
        if not (d / "test.jsonl").exists():
            raise StropError(f"{d}: the split stage's files are missing; delete this cycle directory to restart.")

        # 3. sample
        if stage("sample"):
            t0 = time.perf_counter()
            prompts = read_jsonl(d / "prompts.jsonl", Prompt)
            _say(f"sampling {len(prompts)} prompts × {cfg.sample.n_per_prompt} from {serving.version} "
                 f"(T={cfg.sample.temperature}, top-k {cfg.sample.top_k}, top-p {cfg.sample.top_p})")
            stats = sample(base_gguf, prompts, d / "samples.jsonl", cfg.sample, progress=self.progress,
                           prompt=cfg.prompt, repo_name=self.repo.name)
            write_json_atomic(d / "sample_stats.json", stats.as_dict())
            _say(f"sample: kept {stats.kept}, dropped {dict(stats.dropped)}, {stats.tokens_per_s:.1f} tokens/s")
            timed("sample", t0)

        # 4. train
        train_cfg = cfg.train
        if stage("train"):
            from .launch import run_train
            from .train import TrainConfig

            train_cfg = train_cfg or TrainConfig()
            t0 = time.perf_counter()
            samples = read_jsonl(d / "samples.jsonl", Sample)
            examples = training_examples(samples, read_jsonl(d / "prompts.jsonl", Prompt), self.repo.name)
            _say(f"training a LoRA on {len(samples)} samples and {len(examples) - len(samples)} accepted "
                 f"completions from {base_gguf.name}")
            result = run_train(base_gguf, examples, d / "train", train_cfg, progress=self.progress)
            write_json_atomic(d / "train.json", result.to_json())
            timed("train", t0)

        # 5. export
        cand_gguf = d / f"candidate-{cfg.quantization.lower()}.gguf"
        if stage("export"):
            from transformers import AutoModelForCausalLM, AutoTokenizer

            from .export import export_gguf, roundtrip_check
            from .quantize import quantize_gguf

            t0 = time.perf_counter()
            merged = d / "train" / "merged"
            model = AutoModelForCausalLM.from_pretrained(merged, dtype="float32")
            tok = AutoTokenizer.from_pretrained(merged)
            f16 = d / "candidate-f16.gguf"
            _say("exporting the merged model to GGUF")
            export_gguf(model, tok, f16, dtype="f16", tokenizer_source_gguf=base_gguf,
                        metadata={"strop.parent": serving.version, "strop.cycle": d.name, "strop.repo": self.key})
            probes = [s.prefix[-400:] for s in read_jsonl(d / "samples.jsonl", Sample) if s.prefix.strip()][:4]
            check = roundtrip_check(model, tok, f16, probes or ["def main():\n    return "])
            write_json_atomic(d / "export.json", dataclasses.asdict(check))
            if not check.passed:
                raise StropError(f"the exported GGUF disagrees with the PyTorch model ({check}); not promoting.")
            quantize_gguf(f16, cand_gguf, cfg.quantization)
            f16.unlink(missing_ok=True)
            if cfg.export_adapter:
                from .export_adapter import export_adapter_gguf

                export_adapter_gguf(d / "train" / "adapter", model.config, d / ADAPTER_NAME)
            del model
            timed("export", t0)

        # 6. evaluate
        if stage("evaluate"):
            t0 = time.perf_counter()
            val = read_jsonl(d / "validation.jsonl", EvalItem)
            test = read_jsonl(d / "test.jsonl", EvalItem)
            base_t = float(serving.decoding.get("temperature", 0.0))
            _say(f"evaluating on {len(test)} held-out items (T_eval tuned on {len(val)} validation items)")
            verdict = compare(cand_gguf, base_gguf, val, test, cfg.eval, prompt=cfg.prompt, repo_name=self.repo.name,
                              baseline_temperature=base_t,
                              progress=self.progress)
            write_report(verdict, d)
            timed("evaluate", t0)

        # 7. register (and promote)
        report = json.loads((d / "report.json").read_text())
        split_meta = json.loads((d / "split.json").read_text())
        sample_stats = json.loads((d / "sample_stats.json").read_text())
        train_meta = json.loads((d / "train.json").read_text())
        manifest = {
            "name": f"{self.repo.name}-distilled",
            "source": "distill",
            "base": serving.name, "parent": serving.version, "cycle": d.name,
            "data": {"split": split_meta, "prompts": len(read_jsonl(d / "prompts.jsonl", Prompt)),
                     "samples": sample_stats},
            "hyperparameters": {"sample": dataclasses.asdict(cfg.sample),
                                "train": {k: v for k, v in train_meta.items() if k not in ("losses",)},
                                "quantization": cfg.quantization},
            "metrics": {"candidate": report["candidate"], "baseline": report["baseline"]},
            "decoding": {"temperature": report["t_eval"], "top_k": cfg.eval.top_k, "top_p": cfg.eval.top_p},
            "decision": {"promote": report["promote"], "reasons": report["reasons"]},
        }
        if (d / ADAPTER_NAME).exists():
            manifest["adapter"] = {"file": ADAPTER_NAME, "applies_to": serving.version,
                                   "usage": "llama.cpp --model <parent GGUF> --lora adapter.gguf"}
        reports = [d / n for n in ("report.json", "report.txt", "report.png", ADAPTER_NAME) if (d / n).exists()]
        entry = self.registry.add_version(self.key, cand_gguf, manifest, extra_files={p.name: p for p in reports})
        outcome.version = entry.version
        outcome.reasons = report["reasons"]
        if report["promote"] and cfg.promote:
            self.registry.promote(self.key, entry.version)
            outcome.promoted = True
            _say(f"promoted {entry.version}: " + "; ".join(report["reasons"]))
        else:
            _say(f"kept {serving.version} in service; {entry.version} registered, not promoted: "
                 + "; ".join(report["reasons"]))
        cand_gguf.unlink(missing_ok=True)  # the registry holds its copies
        (d / ADAPTER_NAME).unlink(missing_ok=True)
        timings["register"] = 0.0
        self._done(d, "register", seconds=timings, version=entry.version, promoted=outcome.promoted)
        outcome.seconds_by_stage = timings
        return outcome


def unseen(items: list[EvalItem], seen: TrainText) -> list[EvalItem]:
    """The evaluation items whose target is not in `seen` (text that training learns verbatim)."""
    return [it for it in items if it.target not in seen]


def training_examples(samples: list[Sample], prompts: list[Prompt], repo_name: str = "") -> list[TrainExample]:
    """What the LoRA learns from: the model's own samples, raw (weight 1), and each completion a user
    accepted, as far as it was accepted, weighted by how much of it they kept (`logged_prompt`): an
    own sample, verified."""
    examples = [TrainExample(s.prefix, s.suffix, s.completion, s.weight, s.path, s.language, s.snippets, s.repo_name)
                for s in samples]
    # A logged prompt keeps the served windows and snippets as they were (the log stores them).
    examples += [TrainExample(p.prefix, p.suffix, p.reference, p.weight, p.path, p.language, p.snippets, repo_name)
                 for p in prompts if p.source == "log" and p.reference.strip()]
    return examples


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
        if section in ("serve", "log"):  # serving's sections of the same file
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


_SECTIONS = ("prompt", "split", "harvest", "sample", "train", "eval")


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
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config, args.set, args.exclude)
    repo = args.repo.resolve()
    if not repo.is_dir():
        raise StropError(f"--repo {args.repo}: not a directory")
    cycle = Cycle(repo, cfg)
    if args.every:
        _say(f"running a cycle every {args.every:.0f}s; Ctrl-C stops between cycles")
        while True:
            try:
                cycle.run(force=args.force)
            except StropError as err:  # one failed cycle must not end the schedule
                _say(f"cycle failed: {err}")
            time.sleep(args.every)
    outcome = cycle.run(force=args.force)
    if not outcome.skipped:
        _say(f"cycle done in {sum(outcome.seconds_by_stage.values()):.0f}s: {outcome.seconds_by_stage}")
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
