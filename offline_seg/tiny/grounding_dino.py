"""A tiny random Grounding DINO (Swin + BERT + deformable transformer) in the transformers format.

Random weights would give every query a score near 0 or 1 (dot products of layer-normed vectors), so
the writer rescales the two layer norms that feed the contrastive class head: the logits become a
small random spread around a negative offset, and a few queries (not all) clear the default box
threshold of 0.18 on any image. Deterministic given the seed.
"""

from __future__ import annotations

import logging
from pathlib import Path

from offline_seg.datasets import CITYSCAPES, COCO81_ENTRIES, VOC

logger = logging.getLogger(__name__)

# BERT keeps its special tokens at these ids, and transformers' Grounding DINO hard-codes
# [CLS]=101, [SEP]=102, "."=1012 and "?"=1029 as phrase delimiters, so the tiny vocab keeps them too.
_FIXED_IDS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103, ".": 1012, "?": 1029}
_EXTRA_WORDS = (
    "person people man woman child boy girl dog cat car bus sofa couch table chair sky grass plant tree road "
    "building background tv monitor bottle bird horse sheep cow boat train bicycle motorbike motorcycle "
    "aeroplane airplane dining potted truck wall floor ceiling window door street sidewalk water sea mountain "
    "room living a an the and with on in of , - ' ( ) / :"
)
IMAGE_SIZE = 96  # shortest edge the tiny image processor resizes to: keeps CPU runs fast

# Contrastive-logit shaping: logits ≈ SCALE² · N(0, d) - OFFSET², see `_shape_logits`.
_VISION_SCALE = 0.35
_TEXT_SCALE = 0.35
_OFFSET = 1.6


def _words() -> list[str]:
    text = " ".join([VOC, CITYSCAPES, " ".join(name for _, name in COCO81_ENTRIES), _EXTRA_WORDS])
    for sep in ",;/()'":
        text = text.replace(sep, " ")
    words: list[str] = []
    for word in text.lower().replace("-", " - ").split():
        if word not in words and word not in _FIXED_IDS:
            words.append(word)
    return words + [",", "-", "'", "(", ")", "/", ":"]


def build_vocab() -> dict[str, int]:
    """A BERT-shaped WordPiece vocab: special tokens at BERT's ids, class-name words elsewhere."""
    size = max(_FIXED_IDS.values()) + 1
    slots: list[str | None] = [None] * size
    for token, index in _FIXED_IDS.items():
        slots[index] = token
    words = [w for w in _words() if w not in _FIXED_IDS]
    free = [i for i, token in enumerate(slots) if token is None and i > 103]
    if len(words) > len(free):
        raise ValueError("tiny vocab overflow")
    for index, word in zip(free, words):
        slots[index] = word
    unused = 0
    vocab: dict[str, int] = {}
    for index, token in enumerate(slots):
        if token is None or token in vocab:
            token = f"[unused{unused}]"
            unused += 1
        vocab[token] = index
    return vocab


def _shape_logits(model, seed: int) -> None:
    """Scale the decoder's final layer norm (vision side) and the last text-enhancer layer norm (text
    side), and shift them along one shared direction, so logits = s_v·s_t·<z_v, z_t> − OFFSET² + small."""
    import torch

    generator = torch.Generator().manual_seed(seed + 1)
    d_model = model.config.d_model
    direction = torch.randn(d_model, generator=generator)
    direction = direction / direction.norm()
    with torch.no_grad():
        vision_norm = model.model.decoder.layer_norm
        vision_norm.weight.fill_(_VISION_SCALE)
        vision_norm.bias.copy_(-_OFFSET * direction)
        text_norm = model.model.encoder.layers[-1].text_enhancer_layer.layer_norm_after
        text_norm.weight.fill_(_TEXT_SCALE)
        text_norm.bias.copy_(_OFFSET * direction)


def write(model_dir: Path, seed: int = 0) -> Path:
    """Write a ~0.5M-parameter Grounding DINO with its processor; returns the directory."""
    import torch
    from transformers import (
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        SwinConfig,
    )
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import (
        GroundingDinoImageProcessorPil,
    )

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)

    vocab = build_vocab()
    # transformers 5 ignores `vocab_file=`; a dict gives a working fast tokenizer (saved as tokenizer.json).
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=True)
    image_processor = GroundingDinoImageProcessorPil(size={"shortest_edge": IMAGE_SIZE, "longest_edge": IMAGE_SIZE * 2})
    # The hub layout (preprocessor_config.json + tokenizer files), which the manifest checks for.
    image_processor.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)

    backbone = SwinConfig(
        image_size=IMAGE_SIZE,
        patch_size=4,
        embed_dim=16,
        depths=[1, 1, 1, 1],
        num_heads=[1, 2, 2, 4],
        window_size=4,
        out_features=["stage2", "stage3", "stage4"],
    )
    text = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    config = GroundingDinoConfig(
        backbone_config=backbone,
        text_config=text,
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        num_queries=30,
        encoder_layers=1,
        encoder_ffn_dim=64,
        encoder_attention_heads=2,
        decoder_layers=2,
        decoder_ffn_dim=64,
        decoder_attention_heads=2,
        d_model=32,
        num_feature_levels=4,
        encoder_n_points=2,
        decoder_n_points=2,
        max_text_len=256,
        disable_custom_kernels=True,
    )
    torch.manual_seed(seed)
    model = GroundingDinoForObjectDetection(config).eval()
    _shape_logits(model, seed)
    model.save_pretrained(model_dir)
    logger.debug("wrote tiny grounding dino to %s", model_dir)
    return model_dir
