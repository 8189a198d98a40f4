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
    if name in ("Pipeline", "PipelineConfig"):
        from offline_seg import pipeline

        return getattr(pipeline, name)
    raise AttributeError(name)
