"""offline_seg: training-free zero-shot semantic segmentation with open models, fully offline.

    from offline_seg import Pipeline, PipelineConfig, ClassList
    pipeline = Pipeline(PipelineConfig(classes=ClassList.preset("voc"), weights_dir="weights"))
    result = pipeline.segment("photo.jpg")
    result.class_map  # (H, W) class indices
"""

from offline_seg.classes import ClassList
from offline_seg.errors import InvalidInputError, MissingWeightsError, OfflineSegError
from offline_seg.types import Detections, InstanceMasks, Recognition, SegmentationResult

__all__ = [
    "ClassList",
    "Detections",
    "InstanceMasks",
    "InvalidInputError",
    "MissingWeightsError",
    "OfflineSegError",
    "Pipeline",
    "PipelineConfig",
    "Recognition",
    "SegmentationResult",
]


def __getattr__(name: str):
    # The pipeline imports torch and transformers; load it only when asked for.
    if name == "Pipeline":
        from offline_seg.pipeline import Pipeline

        return Pipeline
    if name == "PipelineConfig":
        from offline_seg.config import PipelineConfig

        return PipelineConfig
    raise AttributeError(name)
