"""A tiny random SAM 3 (ViT + CLIP text encoder + DETR + mask head, 0.29M parameters) in transformers' format.

The directory has what the real `facebook/sam3` dir has for the image detector: config.json (model_type
"sam3"), model.safetensors, a CLIP BPE tokenizer (tokenizer.json, tokenizer_config.json) and
preprocessor_config.json in `Sam3ImageProcessor`'s format (written by hand: that class needs torchvision). The tokenizer's BPE merges spell the class-list words, so class names are
real word tokens as in CLIP.

transformers initialises the model near zero (every mask logit ~0, every score ~0.25), so, as for the
tiny SAM, the writer redraws every non-norm weight as N(0, 0.2^2): masks get structure, the presence head
varies per prompt. Then it offsets the query scores: the text and query projections of the scoring head
get biases along one shared direction, shifting every query logit by about -1.2, so a few queries of a
prompt (not all) clear the default 0.3 threshold, and which ones depends on the prompt and the image.
Deterministic given the seed.
"""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)

IMAGE_SIZE = 112  # 8x8 patches of 14 px: windowed layers (window 4) differ from the global one
PATCH = 14
HIDDEN = 32
_SPECIAL = ("<|startoftext|>", "<|endoftext|>")
# Score shaping (see the module docstring): text-projection bias length and the resulting logit offset.
_TEXT_BIAS = 2.0
_LOGIT_OFFSET = -1.2


def build_tokenizer_files() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A CLIP-style byte-level BPE: every byte (alone and word-final), then merges spelling the class words."""
    from tokenizers.pre_tokenizers import ByteLevel

    from offline_seg.tiny.grounding_dino import _words  # the class-list words of all presets

    alphabet = sorted(ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for token in alphabet + [c + "</w>" for c in alphabet]:
        vocab.setdefault(token, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in _words():
        if not word.isalpha() or len(word) < 2:
            continue
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        left = pieces[0]
        for right in pieces[1:]:
            merged = left + right
            if merged not in vocab:
                merges.append((left, right))
                vocab[merged] = len(vocab)
            left = merged
    for token in _SPECIAL:
        vocab[token] = len(vocab)
    return vocab, merges


def _shape_scores(model, seed: int) -> None:
    """Bias the scoring head's text and query projections along one direction u: every query logit moves by
    (_TEXT_BIAS u) . (b u) x scale = _LOGIT_OFFSET, plus a prompt- and query-dependent spread."""
    import torch

    direction = torch.randn(HIDDEN, generator=torch.Generator().manual_seed(seed + 1))
    direction = direction / direction.norm()
    scoring = model.dot_product_scoring
    with torch.no_grad():
        scoring.text_proj.bias.copy_(_TEXT_BIAS * direction)
        scoring.query_proj.bias.copy_(_LOGIT_OFFSET / (_TEXT_BIAS * scoring.scale) * direction)


def build(seed: int = 0):
    """The tiny `Sam3Model` and its tokenizer."""
    import torch
    from transformers import CLIPTextConfig, CLIPTokenizer, Sam3Config, Sam3Model

    from offline_seg.tiny.sam import _is_norm, _redraw

    vocab, merges = build_tokenizer_files()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges)
    grid = IMAGE_SIZE // PATCH
    text = CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=HIDDEN, intermediate_size=64, projection_dim=HIDDEN,
        num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=32, hidden_act="gelu",
        bos_token_id=vocab[_SPECIAL[0]], eos_token_id=vocab[_SPECIAL[1]], pad_token_id=vocab[_SPECIAL[1]],
    )
    config = Sam3Config(
        vision_config=dict(
            backbone_config=dict(
                model_type="sam3_vit_model", hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=PATCH, window_size=4,
                global_attn_indexes=[1], pretrain_image_size=IMAGE_SIZE // 2,
            ),
            fpn_hidden_size=HIDDEN,
            backbone_feature_sizes=[[grid * 4] * 2, [grid * 2] * 2, [grid] * 2],
        ),
        text_config=text.to_dict(),
        geometry_encoder_config=dict(hidden_size=HIDDEN, num_layers=1, num_attention_heads=2, intermediate_size=64),
        detr_encoder_config=dict(hidden_size=HIDDEN, num_layers=1, num_attention_heads=2, intermediate_size=64),
        detr_decoder_config=dict(hidden_size=HIDDEN, num_layers=2, num_queries=16, num_attention_heads=2,
                                 intermediate_size=64),
        mask_decoder_config=dict(hidden_size=HIDDEN, num_attention_heads=2),
    )
    torch.manual_seed(seed)
    model = Sam3Model(config).eval()
    _redraw(model, seed, _is_norm(model))
    _shape_scores(model, seed)
    return model, tokenizer


def write(model_dir: Path, seed: int = 0) -> Path:
    """Write config.json, model.safetensors, the tokenizer files and preprocessor_config.json."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    from offline_seg.tiny.sam import write_squash_preprocessor

    model, tokenizer = build(seed)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    write_squash_preprocessor(model_dir, "Sam3", IMAGE_SIZE, IMAGE_SIZE // PATCH * 4, [0.5] * 3, [0.5] * 3)
    logger.debug("wrote tiny SAM 3 to %s", model_dir)
    return model_dir
