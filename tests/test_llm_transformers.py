"""The transformers backend on a tiny random Llama and on a real instruct LLM (SmolLM2-135M GGUF)."""

import pytest

from offline_seg.classes import ClassList
from offline_seg.errors import MissingWeightsError
from offline_seg.llm import load_llm
from offline_seg.llm.base import LabelList
from offline_seg.llm.transformers_backend import TransformersLLM
from offline_seg.stages.refiner import Refiner
from offline_seg.types import Recognition

VOC = ClassList.preset("voc")
CONVERSATION = [{"role": "system", "content": "Answer with one word."}, {"role": "user", "content": "a puppy"}]


def test_choices_always_answer_a_member_and_match_the_likelihoods(tiny_llm_dir):
    llm = TransformersLLM(tiny_llm_dir)
    choices = ["cat", "dog", "dining-table", "potted-plant"]
    answers = llm.complete([CONVERSATION, CONVERSATION], choices=choices)
    assert answers[0] == answers[1] and answers[0] in choices
    llm._load()
    scores = llm.choice_log_likelihoods(llm._prompt_ids(CONVERSATION), choices)
    assert scores.shape == (4,) and bool((scores < 0).all())
    assert answers[0] == choices[int(scores.argmax())]


def test_batched_generation_equals_one_by_one(tiny_llm_dir):
    llm = TransformersLLM(tiny_llm_dir, batch_size=4)
    other = [{"role": "user", "content": "a much longer question about many dogs and cats on a sofa"}]
    batched = llm.complete([CONVERSATION, other], max_new_tokens=8)
    single = [llm.complete([c], max_new_tokens=8)[0] for c in (CONVERSATION, other)]
    assert batched == single
    assert all(isinstance(text, str) for text in batched)


def test_random_model_constrained_to_a_label_list_answers_only_members(tiny_llm_dir):
    coco = ClassList.preset("coco81")
    constraint = LabelList(coco.foreground)
    llm = TransformersLLM(tiny_llm_dir, batch_size=3)
    other = [{"role": "user", "content": "a kitchen with an oven, a sink and a refrigerator"}]
    conversations = [CONVERSATION, other, CONVERSATION, other]
    for max_new_tokens in (3, 40):  # 3 tokens: cut mid-label, the partial tail is dropped
        replies = llm.complete(conversations, constraint=constraint, max_new_tokens=max_new_tokens)
        assert replies[0] == replies[2] and replies[1] == replies[3]
        for reply in replies:
            items = reply.split(", ") if reply else []  # empty: no label finished within 3 tokens
            assert all(item in coco.foreground for item in items), reply
            assert len(items) == len(set(items))
    assert llm.complete([other], constraint=constraint, max_new_tokens=40) == [replies[1]]  # batch-independent
    stats = llm.stats.snapshot()
    assert stats["calls"] == 3 and stats["requests"] == 9 and stats["prompt_tokens"] > 0 < stats["completion_tokens"]


def test_missing_model_dir_names_the_file(tmp_path):
    llm = load_llm(f"transformers:{tmp_path / 'nope'}")
    with pytest.raises(MissingWeightsError, match="nope"):
        llm.complete([CONVERSATION])
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingWeightsError, match="config.json"):
        TransformersLLM(tmp_path / "empty").complete([CONVERSATION])


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf) -> TransformersLLM:
    pytest.importorskip("gguf")
    return TransformersLLM(smollm2_gguf)


def test_real_llm_constrained_post_refinement_is_always_valid(smollm2):
    refiner = Refiner(smollm2, VOC)
    phrases = ["man", "puppy", "table", "tv screen", "couch", "jet"]
    result = refiner.post_refine(phrases)
    assert set(result.replies) == set(phrases)
    assert all(reply in VOC.names for reply in result.replies.values())  # 100 % members, by construction
    assert all(label is None or label in VOC.foreground for label in result.labels)


def test_real_llm_pre_refinement_returns_only_members(smollm2):
    recognitions = [Recognition(("dog", "grass", "man"), "a man walking a dog"),
                    Recognition(("street", "bus", "car"), "a red bus on a city street")]
    constrained = Refiner(smollm2, VOC, max_new_tokens=24).pre_refine(recognitions)
    for labels, reply in constrained:  # constrained: the whole reply is a label list, 100 % members
        assert labels and reply.split(", ") == labels and all(label in VOC.foreground for label in labels)
    [(labels, reply)] = Refiner(smollm2, VOC, max_new_tokens=24, constrained=False).pre_refine(recognitions[:1])
    assert isinstance(reply, str) and reply
    assert all(label in VOC.foreground for label in labels)


def test_cached_choice_scoring_equals_full_sequence_scoring(tiny_llm_dir):
    import torch

    llm = TransformersLLM(tiny_llm_dir)
    llm._load()
    prompt = llm._prompt_ids(CONVERSATION)
    choices = ["cat", "dining-table", "potted-plant", "tv"]
    fast = llm.choice_log_likelihoods(prompt, choices)
    end = llm._end_of_turn_id()
    expected = []
    for choice in choices:
        continuation = llm._tokenizer(choice, add_special_tokens=False)["input_ids"] + [end]
        with torch.no_grad():
            logits = llm._model(input_ids=torch.tensor([prompt + continuation])).logits[0]
        log_probs = torch.log_softmax(logits.float(), -1)
        expected.append(sum(float(log_probs[len(prompt) - 1 + i, t]) for i, t in enumerate(continuation)))
    assert torch.allclose(fast, torch.tensor(expected), atol=1e-4)


def test_shared_prefix_scoring_equals_per_prompt_scoring(tiny_llm_dir):
    """The system prompt is encoded once (and kept for the next call); every phrase and choice is scored
    against that cache, with the same log-likelihoods as encoding each prompt whole."""
    import torch

    llm = TransformersLLM(tiny_llm_dir, batch_size=2)  # chunks of 8 rows: several chunks, ragged widths
    llm._load()
    system = {"role": "system", "content": "Pick one label of: cat, dog, dining-table, potted-plant."}
    conversations = [[system, {"role": "user", "content": text}] for text in ("a puppy", "tables and chairs", "x")]
    prompts = [llm._prompt_ids(c) for c in conversations]
    choices = ["cat", "dining-table", "potted-plant", "tv"]
    shared = llm.choice_log_likelihoods_shared(prompts, choices, llm._context_ids(conversations[0]))
    assert llm._prefix is not None and len(llm._prefix[0]) == len(llm._context_ids(conversations[0]))
    for row, prompt in zip(shared, prompts):
        assert torch.allclose(row, llm.choice_log_likelihoods(prompt, choices), atol=1e-4)
    assert llm.complete(conversations, choices=choices) == [choices[int(row.argmax())] for row in shared]
    single = llm.choice_log_likelihoods_shared(prompts[:1], choices)  # one prompt: all but its last token shared
    assert torch.allclose(single[0], shared[0], atol=1e-4)
