"""A tiny random BLIP-2 (ViT + Q-Former + OPT) with its processor, in the Salesforce/blip2-opt layout.

The tokenizer is a byte-level BPE trained on class names that prepends `</s>` like OPT's; the
processor adds the `<image>` token, whose id the model config records as `image_token_index`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from offline_seg.datasets import CITYSCAPES, COCO81_ENTRIES, VOC

logger = logging.getLogger(__name__)

IMAGE_SIZE = 32  # the tiny image processor's square input: keeps CPU runs fast
NUM_QUERY_TOKENS = 4
SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>"]


def _corpus() -> list[str]:
    lines = [VOC, CITYSCAPES, ", ".join(name for _, name in COCO81_ENTRIES)]
    lines.append(
        "a photo of a man and a dog sitting on a sofa in a living room next to a table. "
        "a cat lying on the grass under a tree. cars and a bus on a city street with buildings and sky."
    )
    return lines * 20


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    # No full byte alphabet: every token is a printable piece of the corpus, so the random model's
    # captions decode to (meaningless) words rather than invalid UTF-8.
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIAL_TOKENS, show_progress=False)
    bpe.train_from_iterator(_corpus(), trainer=trainer)
    bos = bpe.token_to_id("</s>")
    # OPT prepends `</s>` (its bos id is 2) to every sequence.
    bpe.post_processor = processors.TemplateProcessing(
        single="</s> $A", pair="</s> $A </s> $B", special_tokens=[("</s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="</s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def write(model_dir: Path, seed: int = 0) -> Path:
    """Write a ~65k-parameter BLIP-2 and its processor files; returns the directory."""
    import torch
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        Blip2QFormerConfig,
        Blip2VisionConfig,
        GenerationConfig,
        OPTConfig,
    )
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    image_processor = BlipImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    processor = Blip2Processor(
        image_processor=image_processor, tokenizer=_tokenizer(), num_query_tokens=NUM_QUERY_TOKENS
    )
    tokenizer = processor.tokenizer
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    processor.save_pretrained(model_dir)
    image_processor.save_pretrained(model_dir)  # preprocessor_config.json, as in the hub repo

    vision = Blip2VisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=8,
    )
    qformer = Blip2QFormerConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        encoder_hidden_size=32,
        max_position_embeddings=64,
    )
    text = OPTConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        ffn_dim=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        word_embed_proj_dim=32,
        max_position_embeddings=128,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = Blip2Config(
        vision_config=vision,
        qformer_config=qformer,
        text_config=text,
        num_query_tokens=NUM_QUERY_TOKENS,
        image_token_index=image_token_id,
    )
    torch.manual_seed(seed)
    model = Blip2ForConditionalGeneration(config).eval()
    # A random OPT tends to emit `<s>`/`<pad>` or stop at once; suppressing those and repeats (which
    # also blocks `</s>`, already in the prompt) gives a visible caption of corpus word pieces.
    suppress = [tokenizer.convert_tokens_to_ids(t) for t in ("<s>", "<pad>", "<unk>", "<image>")]
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_new_tokens=20,
        suppress_tokens=suppress,
        no_repeat_ngram_size=1,
    )
    model.save_pretrained(model_dir)
    logger.debug("wrote tiny BLIP-2 to %s", model_dir)
    return model_dir
