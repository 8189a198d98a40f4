"""The memory plan's assumptions: bytes per weight under each precision, and the activation, KV-cache
and CUDA-context allowances (estimates, rounded up; `scripts/bench_gpu.py` measures them on a GPU)."""

GiB = 1024**3
MiB = 1024**2

# --- assumptions --------------------------------------------------------------------------------
DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
QUANTS = ("none", "int8", "int4", "awq", "gptq")
# int8 (bitsandbytes LLM.int8): 1 byte per weight + one fp32 scale per output row.
INT8_ROW_SCALE_BYTES = 4
# int4: 0.5 byte per weight + one fp32 absmax per block of 64 (bitsandbytes nf4 as the transformers
# backend loads it, no double quantization) = 0.5625 byte/param. AWQ/GPTQ with group 128 (fp16 scale +
# 4-bit zero per group) is 0.5195 byte/param, so this is the conservative end of "4-bit".
INT4_BLOCK = 64
INT4_BLOCK_SCALE_BYTES = 4
# awq / gptq: a pre-quantized checkpoint, 4-bit weights in groups of 128 with an fp16 scale and a
# 4-bit zero point per group (vLLM and transformers load them as they are).
GROUP_QUANT_SIZE = 128
GROUP_QUANT_BYTES = 2.5
# A model description's quantization -> the byte arithmetic above (vLLM's in-flight bitsandbytes is
# nf4; fp8 is one byte per weight with per-row scales, like int8).
SPEC_QUANTS = {None: "none", "int8": "int8", "int4": "int4", "bitsandbytes": "int4", "fp8": "int8",
               "awq": "awq", "gptq": "gptq"}
# Weight-only quantizers convert Linear weights only; embeddings, norms, biases and the output head
# (lm_head, tied or not) stay at the compute dtype, and `_keep_in_fp32_modules` stay fp32.

CUDA_CONTEXT_BYTES = GiB // 2  # CUDA context + cuBLAS/cuDNN handles, once per process
# Activation workspace per stage at its input size, batch as the stage runs it, counted at 2 bytes
# per element (doubled for fp32). Order-of-magnitude allowances, rounded up:
TAGGER_WORKSPACE = GiB // 2  # RAM++ Swin-L at 384² for ≤ 4 tiles: 96²×192 stage-1 maps, 144² windows,
#                              4,585 tag queries cross-attending 577 image tokens
CAPTIONER_WORKSPACE = GiB // 2  # BLIP-2 at 224² (257 ViT-g tokens), batch 8, 32 query + ≤ 30 new tokens
DETECTOR_WORKSPACE = GiB  # Grounding DINO at 800×1333: Swin-T 200×334 stage-1 tokens, ~22k multi-scale
#                            encoder tokens × 256 fused with ≤ 256 text tokens, 900 queries
SEGMENTER_BASE_WORKSPACE = GiB // 2  # SAM at 1024²: 64² tokens, neck, prompt decoder for all boxes
SAM_IMAGE_SIZE = 1024  # + global-attention scores and the decomposed rel-pos bias: 2 × heads × tokens²
SAM3_BASE_WORKSPACE = GiB  # SAM 3 at 1008²: 72² ViT tokens, FPN maps up to 288²×256, and per batch of 8 prompts
#                            the DETR encoder/decoder (200 queries) and the mask head's 288² maps
#                            + the ViT's global-attention scores: 2 × heads × tokens² (as for SAM)
LLM_FIXED_WORKSPACE = GiB // 4  # a dequantized Linear, cuBLAS workspace, constrained-decoding masks
# LLM KV cache: 2 (K, V) × layers × kv_heads × head_dim × bytes per token, for `sequences` prompts of
# `context` tokens in flight. Defaults: the transformers backend's batch of 8; 1,024 tokens holds the
# pre-refinement prompt with the COCO-81 list (~650 tokens) + 200 new tokens. The planner halves the
# sequences when the LLM step alone does not fit.
LLM_SEQUENCES = 8
LLM_CONTEXT = 1024
# vLLM: a second process (its own CUDA context) that keeps weights + KV cache for its lifetime and
# claims `gpu_memory_utilization` of the card; the plan says which fraction leaves room for the rest.
VLLM_MAX_MODEL_LEN = 2048  # `llm serve` default; the KV cache holds at least this many tokens

CARDS_GIB = (8, 12, 16, 24)
CHAIN = ("tagger", "captioner", "llm", "detector", "llm", "segmenter")  # stage-major order of one chunk
STEP_NAMES = ("tagger", "captioner", "llm (pre)", "detector", "llm (post)", "segmenter")
# The batch runner's steps (offline_seg.specs.STEPS) as the plan names them.
STEP_LABELS = {"tag": "tagger", "caption": "captioner", "labels": "llm (pre)", "detect": "detector",
               "post_refine": "llm (post)", "segment": "segmenter"}


