"""A tiny random BERT sentence embedder in the sentence-transformers layout of all-MiniLM-L6-v2
(config.json, model.safetensors, tokenizer.json, modules.json, 1_Pooling/config.json)."""

from __future__ import annotations

import json
from pathlib import Path

from offline_seg.tiny.grounding_dino import build_vocab

MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
]


def write(model_dir: Path, seed: int = 0) -> Path:
    """Write a ~100k-parameter BERT (hidden 32) whose WordPiece vocab holds the class-name words."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    vocab = build_vocab()
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=True)  # a dict: transformers 5 ignores vocab_file=
    tokenizer.save_pretrained(model_dir)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(model_dir)
    (model_dir / "modules.json").write_text(json.dumps(MODULES, indent=1))
    (model_dir / "1_Pooling").mkdir(exist_ok=True)
    (model_dir / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True})
    )
    return model_dir
