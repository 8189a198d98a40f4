"""Constraint texts and automata, option parsing, the persistent phrase cache: no model needed."""

import re

import pytest

from offline_seg.classes import ClassList
from offline_seg.errors import InvalidInputError
from offline_seg.llm import load_llm
from offline_seg.llm.base import Choice, LabelList, accepts_constraint, resolve_constraint, split_options
from offline_seg.llm.cache import PhraseCache
from offline_seg.llm.constraints import LabelListAutomaton, constraint_gbnf, constraint_regex, validate

COCO = ClassList.preset("coco81")


def test_regex_accepts_exactly_label_lists():
    constraint = LabelList(("car", "carrot", "traffic-light", "hot-dog", "a.b"))
    pattern = re.compile(constraint_regex(constraint))
    for good in ("car", "carrot, car", "traffic-light, hot-dog, a.b", "a.b"):
        assert pattern.fullmatch(good), good
    for bad in ("", "car,car", "car, ", "cars", "axb", "car and carrot", "car, car, car, car, car, car"):
        assert not pattern.fullmatch(bad), bad
    assert re.fullmatch(constraint_regex(Choice(("tv", "cell-phone"))), "cell-phone")
    assert not re.fullmatch(constraint_regex(Choice(("tv", "cell-phone"))), "tv, cell-phone")


def test_gbnf_grammar_text():
    assert constraint_gbnf(Choice(("a", 'say "hi"'))) == 'root ::= "a" | "say \\"hi\\""\n'
    grammar = constraint_gbnf(LabelList(("cat", "dog")))
    assert grammar.startswith('root ::= label (", " label)*') and 'label ::= "cat" | "dog"' in grammar


def test_validate_canonicalises_and_rejects():
    assert validate(" Dog ", Choice(("cat", "dog"))) == "dog"
    assert validate("a dog", Choice(("cat", "dog"))) is None
    labels = LabelList(("cat", "dog", "dining-table"))
    assert validate("cat, Dog, cat", labels) == "cat, dog"
    assert validate("cat, horse", labels) is None
    assert validate("cat, din", labels) is None
    assert validate("cat, din", labels, truncated=True) == "cat"
    assert labels.split("cat, dog, dining-tab") == ["cat", "dog"]


def test_label_list_rejects_separator_inside_a_label():
    with pytest.raises(InvalidInputError, match="separator"):
        LabelList(("a, b", "c"))


def test_automaton_walks_only_label_lists():
    # Characters as tokens: "car" is a prefix of "carrot", the hard case for a trie.
    vocab = {ch: i for i, ch in enumerate(sorted(set("carotdg, ")))}
    end = 99
    automaton = LabelListAutomaton(LabelList(("car", "carrot", "dog")), lambda text: [vocab[c] for c in text], [end])
    state = automaton.start()
    assert automaton.allowed(state) == {vocab["c"], vocab["d"]}
    for ch in "car":
        state = automaton.advance(state, vocab[ch])
    assert automaton.allowed(state) == {vocab["r"], vocab[","], end}  # carrot goes on, or the item ends
    state = automaton.start()
    for ch in "dog, carro":
        state = automaton.advance(state, vocab[ch])
    assert automaton.allowed(state) == {vocab["t"]}
    state = automaton.advance(state, vocab["t"])
    assert automaton.allowed(state) == {vocab[","], end}  # "car" is still unused
    for ch in ", ":
        state = automaton.advance(state, vocab[ch])
    assert automaton.allowed(state) == {vocab["c"]}  # only car left; dog and carrot are used
    state = automaton.advance(automaton.advance(automaton.advance(state, vocab["c"]), vocab["a"]), vocab["r"])
    assert automaton.allowed(state) == {end}  # every label used
    assert automaton.allowed(automaton.advance(state, end)) is None
    with pytest.raises(ValueError):
        automaton.advance(automaton.start(), vocab["o"])


def test_spec_options_and_errors(tmp_path):
    assert split_options("DIR?a=1&b=x") == ("DIR", {"a": "1", "b": "x"})
    assert split_options("DIR") == ("DIR", {})
    llm = load_llm(f"vllm:{tmp_path}?gpu_memory_utilization=0.3&quantization=awq&enforce_eager=1")
    assert llm.engine_args["gpu_memory_utilization"] == 0.3 and llm.engine_args["enforce_eager"] is True
    llm = load_llm("openai:http://127.0.0.1:9/v1?concurrency=3&constraint=gbnf&model=m")
    assert (llm.concurrency, llm.dialect, llm.model) == (3, "gbnf", "m")
    with pytest.raises(InvalidInputError, match="unknown option"):
        load_llm(f"vllm:{tmp_path}?gpu=1")
    with pytest.raises(InvalidInputError, match="bad option"):
        load_llm(f"vllm:{tmp_path}?max_model_len=lots")
    with pytest.raises(InvalidInputError, match="quantization"):
        load_llm(f"vllm:{tmp_path}?quantization=int3")
    with pytest.raises(InvalidInputError, match="available: transformers, vllm_server, vllm, openai"):
        load_llm("llamafile:x")
    served = load_llm(f"vllm-server:{tmp_path}?port=8123&startup_timeout=30&concurrency=4")  # nothing starts
    assert (served.spec.backend, served.startup_timeout, served.server) == ("vllm_server", 30.0, None)
    with pytest.raises(InvalidInputError, match="bad option"):
        load_llm(f"vllm_server:{tmp_path}?port=eighty")


def test_constraint_helpers():
    assert resolve_constraint(["a"], None) == Choice(("a",))
    assert resolve_constraint(None, LabelList(("a",))) == LabelList(("a",))
    with pytest.raises(InvalidInputError):
        resolve_constraint(["a"], Choice(("a",)))

    class Old:
        def complete(self, conversations, *, choices=None, max_new_tokens=200): ...

    class Loose:
        def complete(self, conversations, **options): ...

    assert not accepts_constraint(Old()) and accepts_constraint(Loose())


def test_phrase_cache_survives_and_is_keyed(tmp_path):
    key = dict(model="m1", labels=COCO.names, prompt="P", mode="constrained")
    cache = PhraseCache.open(tmp_path, **key)
    cache.put("puppy", "dog")
    cache.put("wall", None)
    cache.save()
    again = PhraseCache.open(tmp_path, **key)
    assert "puppy" in again and again["puppy"] == "dog" and again["wall"] is None and len(again) == 2
    assert len(PhraseCache.open(tmp_path, **{**key, "model": "m2"})) == 0
    assert len(PhraseCache.open(tmp_path, **{**key, "mode": "free"})) == 0
    assert len(PhraseCache.open(tmp_path, **{**key, "labels": ("background", "dog")})) == 0
    again.path.write_text("{not json")
    assert len(PhraseCache.open(tmp_path, **key)) == 0  # unreadable: ignored, rewritten on the next save
