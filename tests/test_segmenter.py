"""Segmenter: the top-n point rule, the official-checkpoint converter, and two-pass SAM on a tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from offline_seg.errors import InvalidInputError, MissingWeightsError
from offline_seg.models.sam_checkpoint import hf_to_official, infer_sam_config, official_to_hf
from offline_seg.models.sam_loader import load_sam_model
from offline_seg.stages.segmenter import SamSegmenter, TwoPassSegmenter, normalise_jointly, top_n_points
from offline_seg.tiny import sam as tiny_sam
from offline_seg.types import Detections, SamPrediction

# --- top_n_points -------------------------------------------------------------------------------


def _xy(points: np.ndarray) -> list[tuple[float, float]]:
    return [tuple(p) for p in points.tolist()]


def test_top_n_points_joint_normalisation_and_row_major_ties():
    strong = [[0.0, 10.0], [5.0, 10.0]]
    weak = [[1.0, 1.01], [1.02, 0.0]]  # distinct floats, but all 26 after joint uint8 quantisation
    logits = np.array([strong, weak], dtype=np.float32)
    assert normalise_jointly(logits).tolist() == [[[0, 255], [128, 255]], [[26, 26], [26, 0]]]
    a, b = top_n_points(logits, 3)
    assert a.dtype == np.float32 and a.shape == (3, 2)
    # tie between (x=1,y=0) and (x=1,y=1) at 255: row-major first; each pick is zeroed
    assert _xy(a) == [(1, 0), (1, 1), (0, 1)]
    # per-map float order would start at (0, 1) (1.02); joint quantisation ties them, row-major wins
    assert _xy(b) == [(0, 0), (1, 0), (0, 1)]


def test_top_n_points_x_is_column_and_picks_are_zeroed():
    logits = np.array([[[0.0, 1.0, 2.0], [9.0, 3.0, 4.0]]])
    (points,) = top_n_points(logits, 3)
    assert _xy(points) == [(0, 1), (2, 1), (1, 1)]


def test_top_n_points_more_than_available_repeats_first_zero_pixel():
    logits = np.array([[[0.0, 10.0], [5.0, 10.0]], [[1.0, 1.01], [1.02, 0.0]]])
    a, b = top_n_points(logits, 5)
    assert _xy(a) == [(1, 0), (1, 1), (0, 1), (0, 0), (0, 0)]
    assert _xy(b) == [(0, 0), (1, 0), (0, 1), (0, 0), (0, 0)]
    assert top_n_points(logits, 7)[0].shape == (7, 2)


def test_top_n_points_degenerate_inputs():
    assert [p.shape for p in top_n_points(np.zeros((2, 3, 3)), 0)] == [(0, 2), (0, 2)]
    assert top_n_points(np.zeros((0, 3, 3)), 4) == []
    (constant,) = top_n_points(np.full((1, 2, 2), 7.0), 2)
    assert _xy(constant) == [(0, 0), (0, 0)]
    with pytest.raises(ValueError):
        top_n_points(np.zeros((3, 3)), 1)


# --- checkpoint conversion ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def vit_h_meta_state():
    from transformers import SamConfig, SamModel, SamVisionConfig

    vision = SamVisionConfig(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16, global_attn_indexes=[7, 15, 23, 31])
    with torch.device("meta"):
        model = SamModel(SamConfig(vision_config=vision))
    return model.config, model.state_dict()


def test_full_size_key_names(vit_h_meta_state):
    config, hf_state = vit_h_meta_state
    official = hf_to_official(hf_state)
    for name in [
        "image_encoder.patch_embed.proj.weight",
        "image_encoder.pos_embed",
        "image_encoder.blocks.31.attn.rel_pos_h",
        "image_encoder.blocks.31.attn.qkv.weight",
        "image_encoder.blocks.0.norm1.weight",
        "image_encoder.blocks.0.mlp.lin2.bias",
        "image_encoder.neck.3.bias",
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
        "prompt_encoder.point_embeddings.0.weight",
        "prompt_encoder.point_embeddings.3.weight",
        "prompt_encoder.not_a_point_embed.weight",
        "prompt_encoder.mask_downscaling.6.weight",
        "mask_decoder.iou_prediction_head.layers.0.weight",
        "mask_decoder.iou_prediction_head.layers.2.bias",
        "mask_decoder.output_hypernetworks_mlps.3.layers.1.weight",
        "mask_decoder.output_upscaling.3.weight",
        "mask_decoder.transformer.layers.1.norm4.weight",
        "mask_decoder.transformer.layers.0.cross_attn_image_to_token.out_proj.bias",
        "mask_decoder.transformer.norm_final_attn.weight",
    ]:
        assert name in official, name
    assert all(k.split(".")[0] in {"image_encoder", "prompt_encoder", "mask_decoder"} for k in official)
    assert len(official) == len(hf_state) - 1  # the tied positional table appears once
    back = official_to_hf(official)
    assert set(back) == set(hf_state)
    assert all(back[k].shape == hf_state[k].shape for k in hf_state)
    inferred = infer_sam_config(official).vision_config
    assert (inferred.hidden_size, inferred.num_hidden_layers, inferred.num_attention_heads) == (1280, 32, 16)
    assert list(inferred.global_attn_indexes) == [7, 15, 23, 31]
    assert inferred.image_size == 1024 and inferred.window_size == 14


def test_official_round_trip_keys_and_values():
    model = tiny_sam.build(seed=3)
    hf_state = model.state_dict()
    official = hf_to_official(hf_state)
    assert hf_to_official(official_to_hf(official)).keys() == official.keys()
    back = official_to_hf(official)
    assert set(back) == set(hf_state)
    assert all(torch.equal(back[k], hf_state[k]) for k in hf_state)
    assert infer_sam_config(official).to_dict()["vision_config"] == model.config.to_dict()["vision_config"]


def test_unknown_keys_are_rejected():
    with pytest.raises(ValueError, match="not an official SAM checkpoint"):
        official_to_hf({"image_encoder.trunk.0.weight": torch.zeros(1)})


def test_missing_weights(tmp_path):
    with pytest.raises(MissingWeightsError) as info:
        load_sam_model(tmp_path / "nowhere")
    assert info.value.component == "sam"
    with pytest.raises(MissingWeightsError):
        load_sam_model(tmp_path)  # an empty directory


# --- SamSegmenter on the tiny model -------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_sam")
    return tiny_sam.write(root / "hf", seed=0), tiny_sam.write_official(root / "official", seed=0)


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (60, 90, 3), dtype=np.uint8))


def _detections() -> Detections:
    return Detections(
        boxes=np.array([[5, 5, 40, 30], [10, 20, 80, 55], [0, 0, 89, 59], [30, 10, 60, 50]], np.float32),
        scores=np.array([0.9, 0.5, 0.7, 0.3], np.float32),
        phrases=["dog", "sofa", "room", "cat"],
        labels=["dog", None, "wall", "cat"],
    )


def test_tiny_official_and_transformers_give_identical_masks(tiny_paths, image):
    hf_dir, official_pth = tiny_paths
    assert official_pth.name.startswith("sam_vit_") and official_pth.suffix == ".pth"
    a = SamSegmenter(hf_dir, num_points=4).segment(image, _detections())
    b = SamSegmenter(official_pth.parent, num_points=4).segment(image, _detections())
    assert np.array_equal(a.masks, b.masks)
    assert all(np.array_equal(p, q) for p, q in zip(a.points, b.points))


def test_sam_segmenter_two_passes(tiny_paths, image):
    segmenter = SamSegmenter(tiny_paths[0], num_points=5)
    assert segmenter.num_points == 5
    calls = []
    segmenter.model.vision_encoder.register_forward_hook(lambda *args: calls.append(1))
    result = segmenter.segment(image, _detections())
    assert len(calls) == 1  # one image encoding for three boxes and two passes
    assert result.masks.shape == (3, 60, 90) and result.masks.dtype == bool
    assert result.masks.any()  # the tiny model is meaningless, but not silent
    assert result.labels == ["dog", "wall", "cat"]
    assert np.array_equal(result.boxes, _detections().boxes[[0, 2, 3]])
    assert np.allclose(result.scores, [0.9, 0.7, 0.3])
    assert [p.shape for p in result.points] == [(5, 2)] * 3
    for points in result.points:
        assert (points[:, 0] < 90).all() and (points[:, 1] < 60).all() and (points >= 0).all()
    segmenter.segment(image.resize((40, 70)), _detections())
    assert len(calls) == 2


def test_sam_segmenter_box_only_and_empty(tiny_paths, image):
    segmenter = SamSegmenter(tiny_paths[0], num_points=0)
    result = segmenter.segment(image, _detections())
    assert result.masks.shape == (3, 60, 90)
    assert [p.shape for p in result.points] == [(0, 2)] * 3
    empty = segmenter.segment(image, _detections().with_labels([None] * 4))
    assert len(empty) == 0 and empty.masks.shape == (0, 60, 90)
    assert len(segmenter.segment(image, Detections.empty())) == 0
    with pytest.raises(ValueError):
        SamSegmenter(tiny_paths[0], num_points=-1)


def test_sam_segmenter_is_lazy(tmp_path):
    segmenter = SamSegmenter(tmp_path / "absent", num_points=2)  # nothing loads yet
    with pytest.raises(MissingWeightsError):
        segmenter.segment(Image.new("RGB", (8, 8)), _detections())


def test_sam_segmenter_matches_plain_processor_calls(tiny_paths, image):
    """Both passes equal SamProcessor-prompted forward calls: prompt scaling and point choice are right."""
    segmenter = SamSegmenter(tiny_paths[0], num_points=3, strategy="paper")
    model, processor = segmenter.model, segmenter.processor
    detections = _detections().labelled()
    boxes = [detections.boxes.tolist()]

    def logits(**prompts):
        inputs = processor(images=image, input_boxes=boxes, return_tensors="pt", **prompts)
        with torch.no_grad():
            out = model(**inputs, multimask_output=False)
        post = processor.post_process_masks(
            out.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"], binarize=False
        )
        return post[0][:, 0].numpy()

    pass1 = logits()
    expected_points = top_n_points(pass1, 3)
    pass2 = logits(input_points=[[p.tolist() for p in expected_points]], input_labels=[[[1] * 3] * len(detections)])
    result = segmenter.segment(image, _detections())
    assert all(np.array_equal(p, q) for p, q in zip(result.points, expected_points))
    assert np.array_equal(result.masks, pass2 > 0)
    box_only = SamSegmenter(tiny_paths[0], num_points=0)
    box_only._model, box_only._processor = model, processor
    assert np.array_equal(box_only.segment(image, _detections()).masks, pass1 > 0)


def test_sam_predict_returns_iou_and_low_res_and_takes_a_mask_per_box(tiny_paths, image):
    """predict's IoU and low-res logits are the model's; mask_input reaches each box's own decode."""
    segmenter = SamSegmenter(tiny_paths[0], num_points=0)
    model, processor = segmenter.model, segmenter.processor
    boxes = _detections().labelled().boxes
    encoded = segmenter.backend.encode(image)
    first = segmenter.backend.predict(encoded, boxes, None)
    inputs = processor(images=image, input_boxes=[boxes.tolist()], return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs, multimask_output=False)
    np.testing.assert_allclose(first.iou, out.iou_scores.reshape(-1).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(first.low_res, out.pred_masks[0, :, 0].numpy(), rtol=1e-4, atol=1e-4)
    refined = segmenter.backend.predict(encoded, boxes, None, first.low_res)
    for i in range(len(boxes)):  # box i with mask i, as one plain call each
        single = processor(images=image, input_boxes=[[boxes[i].tolist()]], return_tensors="pt")
        with torch.no_grad():
            out = model(**single, input_masks=torch.as_tensor(first.low_res[i : i + 1, None]), multimask_output=False)
        expected = processor.post_process_masks(out.pred_masks, single["original_sizes"], single["reshaped_input_sizes"],
                                                 binarize=False)[0][0, 0].numpy()
        np.testing.assert_allclose(refined.logits[i], expected, rtol=1e-4, atol=1e-4)
    assert not np.allclose(refined.logits, first.logits, atol=1e-3)  # the mask prompt changes the answer


class _RecordingBackend:
    """A SamBackend whose pass-1 logits peak at known pixels, recording what the algorithm asks."""

    def __init__(self):
        self.encodes = 0
        self.decodes: list[tuple[np.ndarray, np.ndarray | None]] = []
        self.masks: list[np.ndarray | None] = []

    def encode(self, image):
        self.encodes += 1
        return image.size

    def predict(self, encoded, boxes, points, mask_input=None):
        width, height = encoded
        self.decodes.append((boxes.copy(), None if points is None else points.copy()))
        self.masks.append(mask_input)
        logits = np.full((len(boxes), height, width), -5.0, np.float32)
        for i, (x0, y0, _, _) in enumerate(boxes.astype(int)):
            logits[i, y0, x0] = 9.0 - i  # the box's top-left pixel is its single best pixel
            logits[i, y0 + 1, x0] = 8.0 - i
        iou = np.full(len(boxes), 0.9, np.float32)
        if points is not None:
            logits[:, : height // 2] = 1.0  # pass 2: the top half is foreground
            iou = np.float32([0.95, 0.5, 0.9])[: len(boxes)]  # higher, lower, equal to pass 1's
        return SamPrediction(logits, iou, np.full((len(boxes), 8, 8), len(self.decodes), np.float32))


def test_two_passes_feed_the_top_points_of_pass_one_into_pass_two():
    backend = _RecordingBackend()
    result = TwoPassSegmenter(backend, num_points=2).segment(Image.new("RGB", (90, 60)), _detections())
    assert backend.encodes == 1 and len(backend.decodes) == 2
    (boxes_1, points_1), (boxes_2, points_2) = backend.decodes
    np.testing.assert_array_equal(boxes_1, [[5, 5, 40, 30], [0, 0, 89, 59], [30, 10, 60, 50]])  # labelled only
    assert points_1 is None
    np.testing.assert_array_equal(boxes_2, boxes_1)
    np.testing.assert_array_equal(points_2, [[[5, 5], [5, 6]], [[0, 0], [0, 1]], [[30, 10], [30, 11]]])
    assert result.labels == ["dog", "wall", "cat"]
    assert result.masks.shape == (3, 60, 90) and result.masks[:, :30].all() and not result.masks[:, 30:].any()
    box_only = _RecordingBackend()
    TwoPassSegmenter(box_only, num_points=0, strategy="gated").segment(Image.new("RGB", (90, 60)), _detections())
    assert len(box_only.decodes) == 1  # n_p = 0 is box only, whatever the strategy


def test_segmenter_strategies_gate_and_feed_the_mask_back():
    image = Image.new("RGB", (90, 60))
    backend = _RecordingBackend()
    result = TwoPassSegmenter(backend, num_points=2, strategy="gated").segment(image, _detections())
    # box 1's second pass predicts a lower IoU (0.5 < 0.9): it keeps its box-only mask and records no points
    assert [len(p) for p in result.points] == [2, 0, 2]
    assert result.masks[[0, 2], :30].all() and not result.masks[[0, 2], 30:].any()
    assert result.masks[1].sum() == 2 and result.masks[1, 0, 0] and result.masks[1, 1, 0]
    assert backend.masks == [None, None]
    refine = _RecordingBackend()
    TwoPassSegmenter(refine, num_points=1, strategy="mask").segment(image, _detections())
    assert refine.masks[0] is None and (refine.masks[1] == 1.0).all()  # pass 1's low-res logits go back in
    with pytest.raises(InvalidInputError, match="point strategy"):
        TwoPassSegmenter(refine, strategy="best")


# --- SAM-HQ and SAM 2 transformers dirs ----------------------------------------------------------


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    """One loaded segmenter per tiny variant, shared: loading dominates these tests' time."""
    root = tmp_path_factory.mktemp("tiny_sam_variants")
    dirs = {"sam_hq": tiny_sam.write_hq(root / "hq", seed=0), "sam2": tiny_sam.write_sam2(root / "sam2", seed=0)}
    segmenters = {name: SamSegmenter(path, num_points=3) for name, path in dirs.items()}
    for segmenter in segmenters.values():
        segmenter.model  # noqa: B018 - load through load_sam_model now
    return segmenters


@pytest.mark.parametrize("model_type, model_class", [("sam_hq", "SamHQModel"), ("sam2", "Sam2Model")])
def test_variant_loads_and_segments_with_one_encoding_per_image(variants, image, model_type, model_class):
    segmenter = variants[model_type]  # loaded by load_sam_model from the written dir
    model = segmenter.model
    assert type(model).__name__ == model_class and model.config.model_type == model_type
    assert not model.training and segmenter.num_points == 3
    calls = []
    hook = model.vision_encoder.register_forward_hook(lambda *args: calls.append(1))
    try:
        result = segmenter.segment(image, _detections())
        other = segmenter.segment(image.resize((40, 70)), _detections())
    finally:
        hook.remove()
    assert len(calls) == 2  # one encoding per image; both passes reuse it
    assert result.masks.shape == (3, 60, 90) and result.masks.dtype == bool
    assert result.masks.any() and not result.masks.all()
    assert [p.shape for p in result.points] == [(3, 2)] * 3
    assert result.labels == ["dog", "wall", "cat"]
    assert other.masks.shape == (3, 70, 40)


def test_sam_hq_decode_matches_plain_processor_calls(variants, image):
    """Box and box+point decodes equal SamHQProcessor-prompted forward calls on pixels, HQ path included."""
    segmenter = variants["sam_hq"]
    model, processor = segmenter.model, segmenter.processor
    assert type(processor).__name__ == "SamHQProcessor"
    detections = _detections().labelled()

    def reference(**prompts):
        inputs = processor(images=image, input_boxes=[detections.boxes.tolist()], return_tensors="pt", **prompts)
        with torch.no_grad():
            out = model(**inputs, multimask_output=False)
        post = processor.post_process_masks(
            out.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"], binarize=False
        )
        return post[0][:, 0].numpy()

    encoded = segmenter.backend.encode(image)
    pass1 = segmenter.backend.decode(encoded, detections.boxes, None)
    np.testing.assert_allclose(pass1, reference(), rtol=1e-5, atol=1e-5)
    points = np.stack(top_n_points(pass1, 3))
    pass2 = segmenter.backend.decode(encoded, detections.boxes, points)
    expected = reference(input_points=[[p.tolist() for p in points]], input_labels=[[[1] * 3] * len(detections)])
    np.testing.assert_allclose(pass2, expected, rtol=1e-5, atol=1e-5)
    result = segmenter.segment(image, _detections())
    assert np.array_equal(result.masks, pass2 > 0)
    # The check has teeth: without the ViT features the HQ mask differs.
    encoded["model_inputs"] = {"image_embeddings": encoded["model_inputs"]["image_embeddings"]}
    assert not np.allclose(segmenter.backend.decode(encoded, detections.boxes, None), pass1, atol=1e-3)


def test_sam2_decode_matches_a_full_forward(variants, image):
    """Reusing SAM 2's feature maps equals a forward on pixels with prompts scaled to the squashed square."""
    from offline_seg.models.sam_loader import Sam2PilProcessor

    segmenter = variants["sam2"]
    model, processor = segmenter.model, segmenter.processor
    assert isinstance(processor, Sam2PilProcessor) and processor.target_size == tiny_sam.IMAGE_SIZE
    inputs = processor(images=image)
    assert inputs["pixel_values"].shape == (1, 3, 128, 128) and inputs["original_sizes"].tolist() == [[60, 90]]
    detections = _detections().labelled()
    scale = np.array([128 / 90, 128 / 60, 128 / 90, 128 / 60])
    points = np.array([[[10, 10], [20, 15]], [[40, 30], [5, 50]], [[45, 20], [31, 11]]], np.float32)
    with torch.no_grad():
        out = model(
            pixel_values=inputs["pixel_values"],
            input_boxes=torch.tensor(detections.boxes * scale, dtype=torch.float32)[None],
            input_points=torch.tensor(points * scale[:2], dtype=torch.float32)[None],
            input_labels=torch.ones(1, 3, 2, dtype=torch.long),
            multimask_output=False,
        )
    expected = processor.post_process_masks(out.pred_masks, inputs["original_sizes"], binarize=False)[0][:, 0]
    actual = segmenter.backend.decode(segmenter.backend.encode(image), detections.boxes, points)
    assert actual.shape == (3, 60, 90)
    np.testing.assert_allclose(actual, expected.numpy(), rtol=1e-5, atol=1e-5)


def test_unsupported_transformers_model_type(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "sam2_video"}')
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(InvalidInputError, match="sam2_video"):
        load_sam_model(tmp_path)
