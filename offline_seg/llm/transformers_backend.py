"""LLM backend on transformers: a local HF directory or a GGUF file, greedy, no network."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Sequence

import torch
from transformers.modeling_outputs import CausalLMOutputWithPast

from offline_seg.errors import InvalidInputError, MissingWeightsError, OfflineSegError
from offline_seg.llm.base import ChatMessage, Choice, Constraint, LabelList, LLMStats, resolve_constraint
from offline_seg.llm.constraints import LabelListAutomaton
from offline_seg.models.hf import bitsandbytes_config

logger = logging.getLogger(__name__)


class TransformersLLM:
    """Chat completion with `AutoModelForCausalLM`.

    With a `Choice`, each answer is the option of highest conditional log-likelihood (option tokens plus
    the end-of-turn token); with a `LabelList`, greedy decoding is masked to a token trie of the labels.
    Either way the reply is valid whatever the model's size. `quantization` ("int4"/"int8") loads the
    Linear weights with bitsandbytes (nf4 in blocks of 64 / LLM.int8), as the memory plan counts them;
    "awq"/"gptq" name a pre-quantized checkpoint, loaded as it is.
    """

    def __init__(
        self,
        model_path: Path,
        *,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
        batch_size: int = 8,
        quantization: str | None = None,
    ) -> None:
        quantization = {"4bit": "int4", "8bit": "int8"}.get(quantization or "", quantization)
        if quantization not in (None, "int4", "int8", "awq", "gptq"):
            raise InvalidInputError(f"transformers quantization must be int4, int8, awq or gptq, not {quantization!r}")
        self.model_path = Path(model_path)
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.quantization = quantization
        self.stats = LLMStats()
        self._model = None
        self._tokenizer = None
        self._automata: dict[LabelList, LabelListAutomaton] = {}
        self._prefix: tuple[tuple[int, ...], object] | None = None  # (prefix ids, its KV cache)

    @property
    def identity(self) -> str:
        """What a persistent answer cache is keyed by: the model file(s) and the loading options."""
        from offline_seg.weights import model_identity

        dtype = str(self.dtype).removeprefix("torch.") if self.dtype is not None else "default"
        return f"transformers:{model_identity(self.model_path)}:{self.quantization or ''}:{dtype}"

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

        from offline_seg.models.loading import loading

        directory, extra = self._locate()
        logger.info("loading LLM from %s %s", directory, extra or "")
        bits = bitsandbytes_config(self.quantization, self.dtype)
        with loading("llm", self.model_path):
            tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True, **extra)
            if bits is not None:
                extra = {**extra, "quantization_config": bits, "device_map": self.device}
            try:
                model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True, dtype=self.dtype,
                                                             **extra)
            except ImportError as error:  # e.g. an AWQ/GPTQ checkpoint without its kernel package
                raise OfflineSegError(
                    f"cannot load the LLM in {directory} with transformers: {error}. A pre-quantized AWQ/GPTQ "
                    f"checkpoint (the default `llm`) is served by vLLM as it is: --llm vllm_server:{directory} (the "
                    "default on --device cuda); or pull `llm_bf16` and use --llm transformers:WEIGHTS/llm_bf16 "
                    "(bitsandbytes 4-bit in flight)") from error
            if bits is None:
                model.to(self.device)
            model.eval()
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._tokenizer, self._model = tokenizer, model

    @property
    def model(self):
        """The loaded torch model (loads it on first use)."""
        self._load()
        return self._model

    def _end_of_turn_id(self) -> int:
        return self._end_ids()[0]

    def _end_ids(self) -> list[int]:
        """The tokens that end a reply: the generation config's, else the tokenizer's end of sequence."""
        eos = self._model.generation_config.eos_token_id
        ids = list(eos) if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else [])
        return [int(i) for i in ids] or [int(self._tokenizer.eos_token_id)]

    def _encode(self, text: str) -> list[int]:
        return self._tokenizer(text, add_special_tokens=False)["input_ids"]

    def _automaton(self, constraint: LabelList) -> LabelListAutomaton:
        if constraint not in self._automata:
            self._automata[constraint] = LabelListAutomaton(constraint, self._encode, self._end_ids())
        return self._automata[constraint]

    def _prompt_ids(self, conversation: Sequence[ChatMessage]) -> list[int]:
        text = self._tokenizer.apply_chat_template(list(conversation), add_generation_prompt=True, tokenize=False)
        return self._tokenizer(text, add_special_tokens=False)["input_ids"]

    # --- completion ---------------------------------------------------------------------------
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
        self._load()
        prompts = [self._prompt_ids(conversation) for conversation in conversations]
        self.stats.add(calls=1, requests=len(prompts), prompt_tokens=sum(len(ids) for ids in prompts))
        if isinstance(constraint, Choice):
            options = constraint.options
            scores = self.choice_log_likelihoods_shared(prompts, options, self._context_ids(conversations[0]))
            answers = [options[int(torch.argmax(row))] for row in scores]
            self.stats.add(completion_tokens=sum(len(self._encode(answer)) + 1 for answer in answers))
            return answers
        replies: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            replies.extend(self._generate(prompts[start : start + self.batch_size], max_new_tokens, constraint))
        if isinstance(constraint, LabelList):  # a reply cut off by max_new_tokens loses its partial last label
            replies = [constraint.separator.join(constraint.split(reply)) for reply in replies]
        return replies

    @torch.inference_mode()
    def _generate(self, prompts: list[list[int]], max_new_tokens: int, constraint: LabelList | None) -> list[str]:
        width = max(len(ids) for ids in prompts)
        pad = self._tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in prompts], device=self.device)
        attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts], device=self.device)
        end_ids = self._end_ids()
        extra = {}
        if constraint is not None:
            from transformers import LogitsProcessorList

            extra["logits_processor"] = LogitsProcessorList(
                [_TrieLogitsProcessor(self._automaton(constraint), width, len(prompts))]
            )
        output = self._model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=end_ids,
            **extra,
        )
        generated = output[:, width:]
        self.stats.add(completion_tokens=sum(_reply_length(row, end_ids) for row in generated.tolist()))
        return [text.strip() for text in self._tokenizer.batch_decode(generated, skip_special_tokens=True)]

    def _context_ids(self, conversation: Sequence[ChatMessage]) -> list[int]:
        """The tokens of every message but the last: the part of a prompt that other prompts share."""
        if len(conversation) < 2:
            return []
        text = self._tokenizer.apply_chat_template(list(conversation[:-1]), tokenize=False)
        return self._tokenizer(text, add_special_tokens=False)["input_ids"]

    def _prefix_cache(self, prefix: list[int]):
        """The KV cache of `prefix`, encoded once and kept for the next call with the same prefix (the
        refiner's system prompt is the same for every phrase of a run)."""
        key = tuple(prefix)
        if self._prefix is None or self._prefix[0] != key:
            output = self._model(input_ids=torch.tensor([prefix], device=self.device), use_cache=True)
            self._prefix = (key, _output_cache(output))
        return self._prefix[1]

    @torch.inference_mode()
    def choice_log_likelihoods_shared(
        self, prompts: Sequence[list[int]], choices: Sequence[str], context: Sequence[int] = ()
    ) -> torch.Tensor:
        """log P(choice, end-of-turn | prompt) for every prompt and choice, (len(prompts), len(choices)).

        The prompts' shared prefix (at most `context`, the system message, when that is a prefix of them
        all) is encoded once and cached across calls; every (prompt tail + choice) row is then scored in
        batches against that cache, so a phrase costs its own few tokens, not the whole prompt again.
        """
        self._load()
        prefix = _common_prefix(prompts)
        if context and len(context) <= len(prefix) and list(prefix[: len(context)]) == list(context):
            prefix = list(context)
        prefix = prefix[: min(len(p) for p in prompts) - 1]  # every row keeps a token to predict from
        end = self._end_of_turn_id()
        continuations = [self._tokenizer(choice, add_special_tokens=False)["input_ids"] + [end] for choice in choices]
        rows = [(i, j, list(p[len(prefix):]), cont) for i, p in enumerate(prompts) for j, cont in enumerate(continuations)]
        scores = torch.zeros(len(prompts), len(choices))
        cache = self._prefix_cache(prefix) if prefix else None
        pad = self._tokenizer.pad_token_id
        step = self.batch_size * 4
        for start in range(0, len(rows), step):
            chunk = rows[start : start + step]
            width = max(len(tail) + len(cont) for _, _, tail, cont in chunk)
            ids = [tail + cont + [pad] * (width - len(tail) - len(cont)) for _, _, tail, cont in chunk]
            mask = [[1] * (len(prefix) + len(tail) + len(cont)) + [0] * (width - len(tail) - len(cont))
                    for _, _, tail, cont in chunk]
            extra = {}
            if cache is not None:
                repeated = copy.deepcopy(cache)
                repeated.batch_repeat_interleave(len(chunk))
                extra[_CACHE_KWARG] = repeated
            logits = self._model(input_ids=torch.tensor(ids, device=self.device),
                                 attention_mask=torch.tensor(mask, device=self.device), **extra).logits
            for row, (i, j, tail, cont) in enumerate(chunk):
                positions = torch.arange(len(tail) - 1, len(tail) - 1 + len(cont), device=self.device)
                log_probs = torch.log_softmax(logits[row, positions].float(), -1)
                targets = torch.tensor(cont, device=self.device)
                scores[i, j] = log_probs[torch.arange(len(cont), device=self.device), targets].sum().cpu()
        return scores

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


def _common_prefix(sequences: Sequence[Sequence[int]]) -> list[int]:
    first = list(sequences[0])
    length = len(first)
    for other in sequences[1:]:
        length = min(length, len(other))
        for index in range(length):
            if other[index] != first[index]:
                length = index
                break
    return first[:length]


def _reply_length(tokens: list[int], end_ids: list[int]) -> int:
    for index, token in enumerate(tokens):
        if token in end_ids:
            return index + 1
    return len(tokens)


class _TrieLogitsProcessor:
    """Masks every token the label-list automaton forbids; one automaton state per batch row.

    A `LogitsProcessor` by duck typing (transformers calls it with the ids so far and the next-token
    scores), so that importing this module does not depend on where transformers keeps that class.
    """

    def __init__(self, automaton: LabelListAutomaton, prompt_width: int, rows: int) -> None:
        self.automaton = automaton
        self.seen = prompt_width
        self.states = [automaton.start() for _ in range(rows)]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[1] > self.seen:
            last = input_ids[:, -1].tolist()
            self.states = [self.automaton.advance(state, token) for state, token in zip(self.states, last)]
            self.seen = input_ids.shape[1]
        mask = torch.zeros_like(scores)
        for row, state in enumerate(self.states):
            allowed = self.automaton.allowed(state)
            if allowed is not None:
                mask[row] = float("-inf")
                mask[row, [token for token in allowed if token < scores.shape[1]]] = 0.0
        return scores + mask


# transformers 5.2x renamed `past_key_values` to `cache` (the old name still works, with a warning).
_CACHE_KWARG = "cache" if "cache" in getattr(CausalLMOutputWithPast, "__dataclass_fields__", {}) else "past_key_values"


def _output_cache(output: CausalLMOutputWithPast):
    return getattr(output, _CACHE_KWARG)
