"""Where the served prompt loses to a plain one: the served path's first-line edit similarity on
bench_retrieval_quality's held-out sample under prompt variants, item by item.

    python benchmarks/diagnose_layout.py --repo GITDIR --rev REV --model GGUF [--kinds fim_line] \
        [--variants served,with-header,line-head-in-prefix,no-heal]

Variants (each one change to the served path, no retrieval, greedy):
- `served`: as `strop serve` lays the prompt out;
- `with-header`: the repository header (`<repo_name>`, `<file_sep>` and the path) whenever the
  repository has a name, snippets or not (what strop did before 2026-12-07);
- `no-header`: no repository header unless other files' snippets are shown;
- `line-head-in-prefix`: the typed part of the cursor's line at the end of the FIM prefix, as a
  plain FIM prompt has it, instead of after the middle marker (which keeps the suffix in the KV
  cache across keystrokes);
- `no-heal`: no token healing;
- `header-framed-snippets`: with `--retrieval`, a FIM hole's repository snippets in the
  repository-level format (`<repo_name>`, `<file_sep>` and paths before the FIM prompt), as strop
  laid them out until 2026-12-07, instead of at the head of the FIM prefix under path comments;
- `no-retrieval`: with `--retrieval`, the served path without it;
- `retrieval-on-top`: with `--retrieval`, the snippets' share added to the prompt's budget rather
  than taken from the current file's window (2,560 tokens when there are snippets);
- `query-near`: with `--retrieval`, the query is the lines just above the cursor's line (a new query
  on every line) instead of those above its 16-line block.

`--retrieval` gives the served path the repository index of the split's training side
(`[prompt] retrieval_k`, as bench_retrieval_quality.py's served+retrieval arm).

The sample is the one bench_retrieval_quality.py draws (same `--items`, `--seed`), so the raw and
served scores there pair with these. Results: benchmarks/results/served-layout-diagnosis-<repo>-<model>.json.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = ("served", "with-header", "no-header", "line-head-in-prefix", "no-heal")
RETRIEVAL_VARIANTS = ("no-retrieval", "served", "header-framed-snippets")
RETRIEVER_VARIANTS = {  # name -> RetrievalSettings fields changed from the defaults
    "query-near": {"block_lines": 1},
}


def variant_layout(name: str):
    """core.fim.layout as the variant lays the prompt out."""
    from core import fim

    def layout(fmt, prefix, suffix, *, snippets=(), path="", language="", repo_name=""):
        if name == "header-framed-snippets" and fmt is not None and fmt.file_sep and snippets and suffix.strip():
            framed = fim.layout(fmt, prefix, "", snippets=snippets, path=path, language=language, repo_name=repo_name)
            hole = fim.layout(fmt, prefix, suffix, path=path, language=language, repo_name=repo_name)
            return framed[:framed.index(fim.Special(fmt.prefix))] + hole
        pieces = fim.layout(fmt, prefix, suffix, snippets=snippets, path=path, language=language, repo_name=repo_name)
        if fmt is None or fmt.suffix_first:
            return pieces
        header = [fim.Special(fmt.repo_name), repo_name + "\n", fim.Special(fmt.file_sep), f"{path}\n"]
        has_header = bool(fmt.repo_name) and pieces[:1] == header[:1]
        if name == "with-header" and not has_header and fmt.file_sep and fmt.repo_name and repo_name:
            pieces = header + pieces
        if name == "no-header" and has_header and not snippets:
            pieces = pieces[len(header):]
        if name == "line-head-in-prefix":
            head, line = fim.split_current_line(prefix)
            if line and pieces[-1] == line and pieces[-2] == fim.Special(fmt.middle):
                pieces = pieces[:-1]
                at = pieces.index(fim.Special(fmt.suffix))
                pieces.insert(at, line)
        return pieces

    return layout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", type=Path, required=True)
    ap.add_argument("--rev", required=True)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--items", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kinds", default="fim_line,next_line,fim_block")
    ap.add_argument("--variants", default=None,
                    help=f"default {','.join(VARIANTS)}; with --retrieval {','.join(RETRIEVAL_VARIANTS)}")
    ap.add_argument("--retrieval", action="store_true", help="repository retrieval over the training side")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--raw-from", type=Path, default=None,
                    help="a bench_retrieval_quality.py result on the same sample: each variant is also paired with its arms")
    args = ap.parse_args()
    args.variants = args.variants or ",".join(RETRIEVAL_VARIANTS if args.retrieval else VARIANTS)
    import core.context as context
    from benchmarks.latency.positions import repo_name_of
    from core.completion import PromptSettings
    from core.fim import layout as served_layout
    from core.metrics import edit_similarity
    from core.repo_context import RetrievalSettings, Retriever, offline_index
    from distill.evaluate import EvalConfig, Evaluator, comparable
    from distill.split import SplitConfig, split_repo

    work = Path(tempfile.mkdtemp(prefix="strop-diagnose-"))
    dest = work / repo_name_of(args.repo).rsplit("/", 1)[-1]
    subprocess.run(["git", "clone", "--quiet", str(args.repo), str(dest)], check=True)
    subprocess.run(["git", "-C", str(dest), "checkout", "--quiet", "--detach", args.rev], check=True)
    split = split_repo(dest, SplitConfig())
    held_out = split.test() + split.validation()  # the same draw as bench_retrieval_quality.py
    items = random.Random(args.seed).sample(held_out, min(args.items, len(held_out)))
    items = [i for i in items if i.kind in args.kinds.split(",")]
    print(f"{len(items)} items", flush=True)

    retriever = None
    if args.retrieval:
        index = offline_index(dest, split.train_files)
        retriever = Retriever(lambda: index, RetrievalSettings())
    ev = Evaluator(args.model, EvalConfig(), prompt=PromptSettings(), repo_name=dest.name, retriever=retriever)
    limits, prompt = ev.completion.limits, ev.completion.prompt
    per_item = {i.id: {"kind": i.kind, "path": i.path, "target": i.target.split("\n", 1)[0]} for i in items}
    summary = {}
    try:
        for name in args.variants.split(","):
            context.layout = (served_layout if name in ("served", "no-heal", "no-retrieval", "retrieval-on-top",
                                                        *RETRIEVER_VARIANTS)
                              else variant_layout(name))
            ev.completion.limits = replace(limits, heal=limits.heal and name != "no-heal")
            ev.completion.retriever = None if name == "no-retrieval" else retriever
            if retriever is not None and name in RETRIEVER_VARIANTS:
                ev.completion.retriever = Retriever(retriever.index, replace(RetrievalSettings(), **RETRIEVER_VARIANTS[name]))
            # retrieval-on-top: the snippets' quarter is added to the prompt instead of taken from
            # the file's own window (2,560 tokens with snippets: 512 for them, 1,536 + 512 local).
            ev.completion.prompt = (replace(prompt, budget_tokens=prompt.budget_tokens * 5 // 4, extra_share=0.2)
                                    if name == "retrieval-on-top" else prompt)
            t0, total = time.perf_counter(), 0.0
            for item in items:
                res = ev.outcome(item, 0.0)
                pred, target = comparable(item, res.text)
                es = edit_similarity(pred, target)
                per_item[item.id][name] = {"es": round(es, 4), "prediction": pred}
                if ev.completion.retriever is not None:
                    per_item[item.id][name]["snippets"] = [sn.path for sn in res.context.snippets]
                total += es
            summary[name] = {"edit_similarity": round(total / max(1, len(items)), 4),
                             "seconds": round(time.perf_counter() - t0, 1)}
            print(name, summary[name], flush=True)
    finally:
        context.layout = served_layout
        ev.close()
    paired_95 = {}
    if args.raw_from is not None:
        from benchmarks.bench_retrieval_quality import paired

        bench = {r["id"]: r for r in json.loads(args.raw_from.read_text())["per_item_es"]}
        ids = [i.id for i in items if i.id in bench]
        ours = list(summary)
        theirs = ("raw", "served", "served_retrieval")
        arms = ({f"bench:{a}": [bench[i][a] for i in ids] for a in theirs}
                | {v: [per_item[i][v]["es"] for i in ids] for v in ours})
        for a in theirs:
            summary[f"bench:{a}"] = {"edit_similarity": round(sum(arms[f"bench:{a}"]) / max(1, len(ids)), 4), "n": len(ids)}
        for v in ours:
            for base in [f"bench:{a}" for a in theirs] + ours[:1]:
                if v == base:
                    continue
                d = paired([{"id": i, "edit_similarity": b, "exact_match": 0.0} for i, b in zip(ids, arms[base])],
                           [{"id": i, "edit_similarity": c, "exact_match": 0.0} for i, c in zip(ids, arms[v])])
                paired_95[f"{v}_minus_{base}"] = {k: d[k] for k in ("es_gain_points", "es_ci_points")}
        print(json.dumps(paired_95, indent=1))
    out = args.out or (ROOT / "benchmarks" / "results" / f"served-layout-diagnosis-{dest.name}-{args.model.stem}"
                       f"{'-retrieval' if args.retrieval else ''}.json")
    out.write_text(json.dumps({
        "benchmark": "served path under prompt variants (diagnose_layout.py), first-line edit similarity, greedy",
        "model": args.model.name, "repo": f"{repo_name_of(args.repo)}@{args.rev}",
        "sample": {"items": args.items, "seed": args.seed, "kinds": args.kinds, "n": len(items)},
        "retrieval": args.retrieval,
        "summary": summary, "paired_95": paired_95, "per_item": per_item}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
