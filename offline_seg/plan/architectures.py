"""The full-size architecture of each model the chain loads, buildable on the meta device: from the
config in its weights dir, else the default model's config written out here."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from offline_seg.errors import InvalidInputError

logger = logging.getLogger(__name__)


# --- default full-size configs --------------------------------------------------------------------
def _ram_plus_defaults() -> Any:
    from offline_seg.models.ram_plus import RamPlusConfig

    return RamPlusConfig()  # the official Swin-L/384 checkpoint carries no config


def _blip2_defaults() -> Any:
    from transformers import Blip2Config, OPTConfig

    text = OPTConfig(  # facebook/opt-2.7b
        hidden_size=2560, num_hidden_layers=32, num_attention_heads=32, ffn_dim=10240, vocab_size=50272,
        word_embed_proj_dim=2560, max_position_embeddings=2048, tie_word_embeddings=True,
    )
    return Blip2Config(text_config=text.to_dict(), num_query_tokens=32)  # vision/Q-Former defaults = ViT-g


def _grounding_dino_defaults() -> Any:
    from transformers import GroundingDinoConfig

    return GroundingDinoConfig()  # defaults are grounding-dino-tiny: Swin-T backbone, BERT-base text


SAM_VARIANTS = {  # vision encoders of the official checkpoints; prompt encoder / decoder are shared
    "vit_b": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, global_attn_indexes=[2, 5, 8, 11]),
    "vit_l": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                  global_attn_indexes=[5, 11, 17, 23]),
    "vit_h": dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16,
                  global_attn_indexes=[7, 15, 23, 31]),
}


def _sam_defaults(variant: str = "vit_h") -> Any:
    from transformers import SamConfig

    return SamConfig(vision_config=dict(SAM_VARIANTS[variant]))


def _sam3_defaults() -> Any:
    from transformers import Sam3Config

    return Sam3Config()  # defaults are facebook/sam3: ViT 1008² (32 layers, 1024 wide), CLIP-L text encoder


def _llama3_8b_defaults() -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(  # meta-llama/Meta-Llama-3-8B-Instruct
        hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
        intermediate_size=14336, vocab_size=128256, rope_theta=500000.0, max_position_embeddings=8192,
        tie_word_embeddings=False,
    )


# --- stage specs ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StageSpec:
    """One model of the chain and how to build its full-size architecture without weights."""

    name: str  # tagger | captioner | llm | detector | segmenter
    description: str
    source: str  # the config it was built from ("defaults" or a path)
    config: Any
    build: Callable[[Any], Any]  # config -> torch module (called under torch.device("meta"))
    uses: int = 1  # runs per chunk (the LLM serves pre- and post-refinement)


def _build_ram_plus(config: Any) -> Any:
    from offline_seg.models.ram_plus import RamPlus

    return RamPlus(config)


def _build_hf(class_name: str) -> Callable[[Any], Any]:
    def build(config: Any) -> Any:
        import transformers

        if class_name == "AutoModelForCausalLM":
            return transformers.AutoModelForCausalLM.from_config(config)
        return getattr(transformers, class_name)(config)

    return build


def _hf_config(directory: Path) -> Any | None:
    """The config.json of a transformers model dir, read offline; None when there is none."""
    path = directory / "config.json"
    if not path.is_file():
        return None
    from transformers import AutoConfig

    data = json.loads(path.read_text(encoding="utf-8"))
    data.pop("quantization_config", None)  # the plan applies its own precision
    model_type = data.pop("model_type", None)
    if model_type is None:
        raise InvalidInputError(f"{path} has no model_type")
    return AutoConfig.for_model(model_type, **data)


def stage_specs(chain: Any) -> list[StageSpec]:
    """The full-size architectures of a `ChainSpec`'s models on the GPU plan, from the configs found at
    their paths (the default models' configs where there are none)."""
    from offline_seg.models.ram_plus import CONFIG_NAME, RamPlusConfig
    from offline_seg.specs import is_sam3

    specs: list[StageSpec] = []
    for model in chain.models:
        if not model.on_gpu_plan:
            logger.info("%s runs off the GPU (%s): not on the plan", model.stage, model.text())
            continue
        path = Path(model.path)
        if model.stage == "tagger":
            file = path / CONFIG_NAME
            config, source = (RamPlusConfig.load(file), str(file)) if file.is_file() else (_ram_plus_defaults(), "defaults")
            spec = StageSpec("tagger", "RAM++ Swin-L" if source == "defaults" else "RAM++", source, config, _build_ram_plus)
        elif model.stage == "captioner":
            spec = _hf_spec("captioner", path, "BLIP-2 OPT-2.7b", _blip2_defaults, "Blip2ForConditionalGeneration")
        elif is_sam3(model):  # detects and segments: the chain has no segmenter then
            spec = _hf_spec("detector", path, "SAM 3", _sam3_defaults, "Sam3Model")
        elif model.stage == "detector":
            spec = _hf_spec("detector", path, "Grounding DINO Swin-T", _grounding_dino_defaults,
                            "GroundingDinoForObjectDetection")
        elif model.stage == "segmenter":
            spec = _sam_spec(path)
        else:
            spec = _llm_spec(path)
        specs.append(replace(spec, uses=max(1, chain.uses(model.stage))))
    return specs


def _llm_spec(path: Path) -> StageSpec:
    """The LLM from a transformers dir's config.json, a GGUF file's metadata, or the default Llama-3-8B."""
    ggufs = [path] if path.suffix == ".gguf" else sorted(path.glob("*.gguf")) if path.is_dir() else []
    if not (path / "config.json").is_file() and len(ggufs) == 1 and ggufs[0].is_file():
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(ggufs[0].parent, gguf_file=ggufs[0].name, local_files_only=True)
        arch = (getattr(config, "architectures", None) or [config.model_type])[0]
        return StageSpec("llm", arch, str(ggufs[0]), config, _build_hf("AutoModelForCausalLM"))
    return _hf_spec("llm", path, "Llama-3-8B", _llama3_8b_defaults, "AutoModelForCausalLM")


def _hf_spec(name: str, directory: Path, label: str, defaults: Callable[[], Any], class_name: str) -> StageSpec:
    config = _hf_config(directory) if directory.is_dir() else None
    if config is None:
        return StageSpec(name, label, "defaults", defaults(), _build_hf(class_name))
    arch = (getattr(config, "architectures", None) or [config.model_type])[0]
    return StageSpec(name, arch, str(directory / "config.json"), config, _build_hf(class_name))


def _sam_spec(target: Path) -> StageSpec:
    """SAM from a transformers dir's config, else the variant named by an official `sam_vit_?_*.pth`."""
    directory = target if target.is_dir() else target.parent
    config = _hf_config(directory) if directory.is_dir() else None
    if config is not None:
        return StageSpec("segmenter", "SAM", str(directory / "config.json"), config, _build_hf("SamModel"))
    candidates = [target] if target.is_file() else sorted(directory.glob("sam_vit_*.pth")) if directory.is_dir() else []
    for path in candidates:
        match = re.search(r"sam_(vit_[bhl])", path.name)
        if match:
            variant = match.group(1)
            return StageSpec("segmenter", f"SAM {variant.replace('_', '-').upper()}", str(path),
                             _sam_defaults(variant), _build_hf("SamModel"))
    return StageSpec("segmenter", "SAM ViT-H", "defaults", _sam_defaults("vit_h"), _build_hf("SamModel"))


