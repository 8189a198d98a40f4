"""The paper's Table-3 rows as named settings, with the paper's numbers to print beside ours."""

from __future__ import annotations

from dataclasses import replace

from offline_seg.config import PipelineConfig

# row -> (PipelineConfig overrides, the paper's row name)
ABLATIONS: dict[str, tuple[dict[str, object], str]] = {
    "full": ({}, "Full model"),
    "no-blip2": ({"use_caption": False}, "w/o BLIP-2"),
    "no-pre-refine": ({"pre_refine": False}, "w/o pre-refinement"),
    "no-post-refine": ({"post_refine": False}, "w/o post-refinement"),
    "no-points": ({"num_points": 0}, "w/o points"),
    "all-off": (
        {"use_caption": False, "pre_refine": False, "post_refine": False, "num_points": 0},
        "all off (RAM-Grounded-SAM)",
    ),
    "gt-labels": ({"oracle_labels": True}, "ground-truth labels in"),
}

# Paper Table 3 (mIoU %, GPT-4 as the LLM), by preset name.
PAPER_MIOU: dict[str, dict[str, float]] = {
    "dram": {"full": 62.01, "no-blip2": 61.30, "no-pre-refine": 37.88, "no-post-refine": 61.28,
             "no-points": 60.81, "all-off": 32.80, "gt-labels": 70.29},
    "voc": {"full": 63.57, "no-blip2": 60.42, "no-pre-refine": 52.64, "no-post-refine": 61.72,
            "no-points": 62.71, "all-off": 25.48, "gt-labels": 67.62},
    "cityscapes": {"full": 34.36, "no-blip2": 32.11, "no-pre-refine": 29.35, "no-post-refine": 28.53,
                   "no-points": 32.57, "all-off": 11.40, "gt-labels": 41.06},
    "coco81": {"full": 37.45, "no-blip2": 36.47, "no-pre-refine": 15.15, "no-post-refine": 35.94,
               "no-points": 36.01, "all-off": 14.32, "gt-labels": 45.66},
}
# The paper's LLM swap row (GPT-4 -> Llama-3-8B), the local-LLM baseline this toolkit starts from.
PAPER_LLAMA3_MIOU = {"dram": 55.09, "voc": 51.35, "cityscapes": 23.63, "coco81": 33.40}


def ablation_config(base: PipelineConfig, row: str) -> PipelineConfig:
    """`base` with the switches of one Table-3 row applied."""
    try:
        overrides, _ = ABLATIONS[row]
    except KeyError:
        raise ValueError(f"unknown ablation {row!r}; rows: {', '.join(ABLATIONS)}") from None
    return replace(base, **overrides)


def paper_row_name(row: str) -> str:
    return ABLATIONS[row][1]
