"""LLM backend on transformers: a local HF directory or a GGUF file, greedy, no network."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Sequence

import torch
from transformers.modeling_outputs import CausalLMOutputWithPast

from offline_seg.errors import MissingWeightsError
from offline_seg.llm.base import ChatMessage

logger = logging.getLogger(__name__)


class TransformersLLM:
    """Chat completion with `AutoModelForCausalLM`.

    With `choices`, each answer is the choice of highest conditional log-likelihood (choice tokens plus
    the end-of-turn token), so the reply is always a member of the list, whatever the model's size.
    """

    def __init__(
        self,
        model_path: Path,
        *,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
        batch_size: int = 8,
    ) -> None:
        self.model_path = Path(model_path)
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self._model = None
        self._tokenizer = None

    # --- loading ------------------------------------------------------------------------------
    def _locate(self) -> tuple[Path, dict[str, str]]:
        path = self.model_path
        if path.is_file() and path.suffix == ".gguf":
            return path.parent, {"gguf_file": path.name}
        if not path.is_dir():
            raise MissingWeightsError(path, component="llm")
        if (path / "config.json").is_file():
            return path, {}
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return path, {"gguf_file": ggufs[0].name}
        raise MissingWeightsError(path / "config.json", component="llm")

    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoModelForCausalLM, AutoTokenizer

        directory, extra = self._locate()
        logger.info("loading LLM from %s %s", directory, extra or "")
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True, **extra)
        model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True, dtype=self.dtype, **extra)
        model.to(self.device).eval()
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._tokenizer, self._model = tokenizer, model

    def _end_of_turn_id(self) -> int:
        eos = self._model.generation_config.eos_token_id
        if isinstance(eos, (list, tuple)):
            eos = eos[0] if eos else None
        return int(eos if eos is not None else self._tokenizer.eos_token_id)

    def _prompt_ids(self, conversation: Sequence[ChatMessage]) -> list[int]:
        text = self._tokenizer.apply_chat_template(list(conversation), add_generation_prompt=True, tokenize=False)
        return self._tokenizer(text, add_special_tokens=False)["input_ids"]

    # --- completion ---------------------------------------------------------------------------
    def complete(
        self,
        conversations: Sequence[Sequence[ChatMessage]],
        *,
        choices: Sequence[str] | None = None,
        max_new_tokens: int = 200,
    ) -> list[str]:
        if not conversations:
            return []
        self._load()
        prompts = [self._prompt_ids(conversation) for conversation in conversations]
        if choices is not None:
            return [choices[int(torch.argmax(self.choice_log_likelihoods(ids, choices)))] for ids in prompts]
        replies: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            replies.extend(self._generate(prompts[start : start + self.batch_size], max_new_tokens))
        return replies

    @torch.inference_mode()
    def _generate(self, prompts: list[list[int]], max_new_tokens: int) -> list[str]:
        width = max(len(ids) for ids in prompts)
        pad = self._tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in prompts], device=self.device)
        attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts], device=self.device)
        output = self._model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
        )
        return [text.strip() for text in self._tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)]

    @torch.inference_mode()
    def choice_log_likelihoods(self, prompt_ids: list[int], choices: Sequence[str]) -> torch.Tensor:
        """log P(choice, end-of-turn | prompt) for every choice, as a (len(choices),) tensor.

        The prompt is encoded once; its KV cache is repeated for a batch of the short continuations,
        so ranking 80 labels costs about one prompt forward pass, not 80.
        """
        self._load()
        end = self._end_of_turn_id()
        continuations = [self._tokenizer(choice, add_special_tokens=False)["input_ids"] + [end] for choice in choices]
        prompt = torch.tensor([prompt_ids], device=self.device)
        encoded = self._model(input_ids=prompt, use_cache=True)
        first = torch.log_softmax(encoded.logits[0, -1].float(), -1)
        scores: list[torch.Tensor] = []
        pad = self._tokenizer.pad_token_id
        for start in range(0, len(continuations), self.batch_size * 4):
            chunk = continuations[start : start + self.batch_size * 4]
            width = max(len(cont) for cont in chunk)
            cache = copy.deepcopy(_output_cache(encoded))
            cache.batch_repeat_interleave(len(chunk))
            input_ids = torch.tensor([cont + [pad] * (width - len(cont)) for cont in chunk], device=self.device)
            attention = torch.tensor(
                [[1] * (len(prompt_ids) + len(cont)) + [0] * (width - len(cont)) for cont in chunk], device=self.device
            )
            logits = self._model(input_ids=input_ids, attention_mask=attention, **{_CACHE_KWARG: cache}).logits
            log_probs = torch.log_softmax(logits.float(), -1)
            for row, cont in enumerate(chunk):
                total = first[cont[0]]
                if len(cont) > 1:
                    steps = torch.arange(len(cont) - 1, device=self.device)
                    total = total + log_probs[row, steps, torch.tensor(cont[1:], device=self.device)].sum()
                scores.append(total.cpu())
        return torch.stack(scores)


# transformers 5.2x renamed `past_key_values` to `cache` (the old name still works, with a warning).
_CACHE_KWARG = "cache" if "cache" in getattr(CausalLMOutputWithPast, "__dataclass_fields__", {}) else "past_key_values"


def _output_cache(output: CausalLMOutputWithPast):
    return getattr(output, _CACHE_KWARG)
