"""The memory plan: exact full-size parameter counts on the meta device, byte arithmetic, residency."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from torch import nn

from offline_seg.cli import main
from offline_seg.plan import (
    GiB,
    PlanOptions,
    count_params,
    make_plan,
    parse_size,
    plan_for,
    profile,
    profile_all,
    stage_specs,
)
from offline_seg.config import PipelineConfig
from offline_seg.chain import chain_spec


def _chain(weights, **config):
    """The description of a default chain over `weights` (models on CUDA unless told otherwise)."""
    return chain_spec(PipelineConfig(weights_dir=weights, **{"device": "cuda", **config}))

FULL_SIZE = {  # the default models of the manifest, counted on the meta device
    "tagger": 329_493_046,  # RAM++ Swin-L
    "captioner": 3_744_679_936,  # BLIP-2 OPT-2.7b
    "llm": 8_030_261_248,  # Llama-3-8B
    "detector": 172_250_626,  # Grounding DINO Swin-T
    "segmenter": 641_090_864,  # SAM ViT-H (transformers)
}


@pytest.fixture(scope="module")
def profiles(tmp_path_factory):
    """Full-size profiles of the default chain (an empty weights dir -> built-in configs); ~2 s."""
    return profile_all(stage_specs(_chain(tmp_path_factory.mktemp("no-weights"))))


def test_full_size_parameter_counts_are_exact(profiles):
    assert {p.name: p.params.total for p in profiles} == FULL_SIZE
    assert all(p.source == "defaults" for p in profiles)


def test_sam_variant_from_official_checkpoint_name(tmp_path):
    (tmp_path / "sam").mkdir()
    (tmp_path / "sam" / "sam_vit_b_01ec64.pth").write_bytes(b"")  # only the name is read
    (spec,) = stage_specs(_chain(tmp_path, oracle_boxes=True))
    assert profile(spec).params.total == 93_735_728


def test_llama_quantizable_part_keeps_embeddings_and_head_16_bit(profiles):
    llm = next(p for p in profiles if p.name == "llm")
    embed_and_head = 2 * 128256 * 4096
    norms = 4096 * (2 * 32 + 1)
    assert llm.params.quantizable == llm.params.total - embed_and_head - norms
    # 16-bit embeddings + head alone are ~1.96 GiB of the ~5.6 GiB int4 model
    assert llm.params.weight_bytes("fp16", "int4") == pytest.approx(
        embed_and_head * 2 + norms * 2 + llm.params.quantizable * 0.5625, abs=1)
    assert 5.5 * GiB < llm.params.weight_bytes("fp16", "int4") < 5.7 * GiB


class _Tiny(nn.Module):
    def __init__(self, tied: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.proj = nn.Linear(8, 16)  # 128 weights quantizable + 16 bias
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 10, bias=False) if not tied else nn.Linear(8, 10, bias=False)
        if tied:
            self.head.weight = self.embed.weight

    def get_output_embeddings(self) -> nn.Module:
        return self.head


def test_bytes_arithmetic_on_a_hand_made_model():
    counts = count_params(_Tiny())
    assert (counts.total, counts.quantizable, counts.quantizable_rows) == (80 + 144 + 32 + 160, 128, 16)
    assert counts.weight_bytes("fp32") == 416 * 4
    assert counts.weight_bytes("bf16") == 416 * 2
    rest = (416 - 128) * 2
    assert counts.weight_bytes("fp16", "int8") == rest + 128 + 4 * 16  # + one fp32 scale per row
    assert counts.weight_bytes("fp16", "int4") == rest + 64 + 4 * 2  # + one fp32 absmax per 64 weights


def test_tied_head_counted_once_and_not_quantized():
    counts = count_params(_Tiny(tied=True))
    assert counts.total == 80 + 144 + 32
    assert counts.quantizable == 128


def test_parse_size():
    assert parse_size("8GiB") == parse_size("8GB") == parse_size("8 gb") == parse_size("8") == 8 * GiB
    assert parse_size("7680MiB") == int(7.5 * GiB)
    with pytest.raises(Exception):
        parse_size("lots")


def test_24_gib_keeps_everything_resident(profiles):
    plan = make_plan(profiles, 24 * GiB, PlanOptions(dtype="fp16", llm_quant="int4"))
    assert plan.fits and plan.swapped_stages == ()
    assert set(plan.resident_stages) == set(FULL_SIZE)
    assert plan.peak_bytes <= 24 * GiB
    assert plan.llm_sequences == 8


def test_8_gib_needs_blip2_int8_then_swaps_within_budget(profiles):
    as_configured = make_plan(profiles, 8 * GiB, PlanOptions(llm_quant="int4"))
    # BLIP-2 fp16 alone is 7.17 GiB of weights: with the CUDA context it cannot fit 8 GiB
    assert not as_configured.fits
    assert as_configured.suggestions == ("--captioner-quant int8",)
    plan = make_plan(profiles, 8 * GiB, PlanOptions(llm_quant="int4", captioner_quant="int8"))
    assert plan.fits and plan.peak_bytes <= 8 * GiB
    assert "llm" in plan.swapped_stages and plan.swapped_stages
    assert plan.stage("llm").precision == "int4/fp16"
    assert plan.llm_sequences < 8  # the KV cache allowance was halved to fit next to 5.6 GiB of weights
    orders = sorted(s.load_order for s in plan.stages)
    assert orders == list(range(1, len(plan.stages) + 1))


def test_vllm_is_resident_and_gets_a_utilization(profiles):
    plan = make_plan(profiles, 24 * GiB, PlanOptions(llm_backend="vllm"))
    assert "llm" in plan.resident_stages
    assert 0.2 < plan.vllm_gpu_memory_utilization < 0.5


def test_config_json_in_weights_dir_changes_the_count(tmp_path):
    from transformers import Blip2Config, LlamaConfig, OPTConfig

    vocab, hidden, layers, inter, heads, kv = 1000, 64, 2, 128, 4, 2
    LlamaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, intermediate_size=inter,
                num_attention_heads=heads, num_key_value_heads=kv, tie_word_embeddings=False,
                ).save_pretrained(tmp_path / "llm")
    text = OPTConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, ffn_dim=64,
                     word_embed_proj_dim=32, max_position_embeddings=64)
    Blip2Config(vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
                qformer_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                    encoder_hidden_size=32, vocab_size=300),
                text_config=text.to_dict(), num_query_tokens=4).save_pretrained(tmp_path / "blip2")
    specs = {s.name: s for s in stage_specs(_chain(tmp_path, refiner="hybrid"))}  # a tiny LLM: auto would not ask it
    assert specs["llm"].source.endswith("config.json")
    head_dim = hidden // heads
    per_layer = 2 * hidden * hidden + 2 * hidden * kv * head_dim + 3 * hidden * inter + 2 * hidden
    assert profile(specs["llm"]).params.total == 2 * vocab * hidden + layers * per_layer + hidden
    blip2 = profile(specs["captioner"]).params.total
    assert 0 < blip2 < 10_000_000 and blip2 != FULL_SIZE["captioner"]


def test_plan_for_follows_the_pipeline_switches(tmp_path):
    plan = plan_for(PipelineConfig(weights_dir=tmp_path, oracle_boxes=True), "8GiB")
    assert [s.name for s in plan.stages] == ["segmenter"] and plan.fits and plan.resident_stages == ("segmenter",)
    plan = plan_for(PipelineConfig(weights_dir=tmp_path, use_caption=False, pre_refine=False, refiner="llm"), "8GiB")
    assert "captioner" not in {s.name for s in plan.stages}
    assert plan.stage("llm").uses == 1 and "llm (pre)" not in plan.steps


def test_cli_plan_prints_the_table(tmp_path):
    result = CliRunner().invoke(main, ["plan", "--gpu-mem", "8GiB", "--captioner-quant", "int8", "--all-cards",
                                       "--weights", str(tmp_path)])
    assert result.exit_code == 0, result.output
    for text in ("Llama-3-8B", "8,030,261,248", "int4/fp16", "swapped", "peak", "fits", "24 GiB"):
        assert text in result.output
