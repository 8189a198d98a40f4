"""GPU memory plan: which stages share one card, and in what order they load.

The full-size architectures are built on the meta device (no weights, no memory) from the configs in
the weights dir, or from the default models' configs written out below when a dir has none. Their
parameters are counted per precision, allowances for activations, the LLM's KV cache and the CUDA
context are added, and a residency is chosen: everything resident if it fits, else the subset that
saves the most host-to-GPU traffic per chunk stays resident and the rest load and unload per chunk in
stage-major order (the batch runner runs a whole chunk through one stage before the next).

All figures are estimates for planning, not measurements; the assumptions are the constants below.
"""

from __future__ import annotations

from offline_seg.plan.allowances import CARDS_GIB, GiB, MiB, STEP_LABELS
from offline_seg.plan.architectures import StageSpec, stage_specs
from offline_seg.plan.fit import PlanError, apply_plan, chain_options, fit_chain, plan_chain, plan_for
from offline_seg.plan.residency import MemoryPlan, PlanOptions, StagePlan, make_plan
from offline_seg.plan.sizes import (ParamCounts, StageProfile, count_params, llm_parameters, loaded_weight_bytes, parse_size,
                                    profile, profile_all)
from offline_seg.plan.table import format_cards, format_plan

__all__ = [
    "CARDS_GIB", "GiB", "MiB", "STEP_LABELS", "MemoryPlan", "ParamCounts", "PlanError", "PlanOptions", "StagePlan", "StageProfile",
    "StageSpec", "apply_plan", "chain_options", "count_params", "fit_chain", "format_cards", "format_plan", "llm_parameters", "loaded_weight_bytes",
    "make_plan", "parse_size", "plan_chain", "plan_for", "profile", "profile_all", "stage_specs",
]
