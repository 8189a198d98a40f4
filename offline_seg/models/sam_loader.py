"""Load SAM from either on-disk format onto transformers' `SamModel` (and SAM-HQ / SAM 2 from transformers dirs).

An official segment-anything `.pth` is translated by models/sam_checkpoint.py, its config read off the
tensor shapes. transformers-format dirs dispatch on config.json's `model_type`: `sam` (`SamModel`), `sam_hq`
(`SamHQModel`) and `sam2` (`Sam2Model`). SAM 2's image processor needs torchvision, so without it an
equivalent torch/PIL one (`Sam2PilProcessor`) stands in.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from offline_seg.errors import InvalidInputError, MissingWeightsError
from offline_seg.models.sam_checkpoint import OFFICIAL_GLOB, infer_sam_config, official_to_hf

if TYPE_CHECKING:
    import torch
    from transformers import SamModel, SamProcessor

logger = logging.getLogger(__name__)


def default_processor(image_size: int = 1024) -> SamProcessor:
    """The standard SAM preprocessing (resize longest side, ImageNet normalise, pad square) for a model size.

    Uses the PIL backend because torchvision is not a dependency of this toolkit.
    """
    from transformers import SamProcessor
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    image_processor = SamImageProcessorPil(
        size={"longest_edge": image_size}, pad_size={"height": image_size, "width": image_size}
    )
    return SamProcessor(image_processor=image_processor)


def find_official_checkpoint(path: Path) -> Path | None:
    """The official `.pth` file that `path` names or holds, if any."""
    path = Path(path)
    if path.is_file() and path.suffix == ".pth":
        return path
    if path.is_dir():
        candidates = sorted(path.glob(OFFICIAL_GLOB))
        if len(candidates) > 1:
            logger.warning("several SAM checkpoints in %s; using %s", path, candidates[0].name)
        return candidates[0] if candidates else None
    return None


def _load_official(checkpoint: Path, device: str, dtype: torch.dtype | None) -> tuple[SamModel, SamProcessor]:
    import torch
    from transformers import SamModel

    logger.info("converting official SAM checkpoint %s", checkpoint)
    official = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if isinstance(official, dict) and "model" in official and isinstance(official["model"], dict):
        official = official["model"]  # training snapshots wrap the weights
    config = infer_sam_config(official)
    state = official_to_hf(official)
    with torch.device("meta"):  # no time spent on random init of weights we overwrite at once
        model = SamModel(config)
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    return model.eval(), default_processor(config.vision_config.image_size)


# config.json `model_type` -> (model class, processor class) in transformers.
TRANSFORMERS_SAM_TYPES: dict[str, tuple[str, str]] = {
    "sam": ("SamModel", "SamProcessor"),
    "sam_hq": ("SamHQModel", "SamHQProcessor"),
    "sam2": ("Sam2Model", "Sam2Processor"),
}
# SAM 2 normalises with ImageNet statistics, like SAM.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class Sam2PilProcessor:
    """The parts of `Sam2Processor` the segmenter uses, without torchvision.

    transformers' `Sam2ImageProcessor` is torchvision-only; this one does the same preprocessing (squash-resize
    to size x size with antialiased bilinear, rescale, ImageNet-normalise; no padding) and mask
    post-processing (bilinear upsampling to the original size) with torch alone.
    """

    def __init__(
        self,
        size: int = 1024,
        image_mean: tuple[float, ...] = _IMAGENET_MEAN,
        image_std: tuple[float, ...] = _IMAGENET_STD,
        rescale_factor: float = 1 / 255,
    ):
        self.target_size = int(size)
        self.image_mean = tuple(image_mean)
        self.image_std = tuple(image_std)
        self.rescale_factor = float(rescale_factor)

    @classmethod
    def from_config_file(cls, path: Path, default_size: int) -> Sam2PilProcessor:
        """Read size/mean/std from a saved `Sam2ImageProcessor` config, defaults where it says nothing."""
        return cls.from_config(json.loads(path.read_text()) if path.is_file() else {}, default_size)

    @classmethod
    def from_config(
        cls,
        config: dict[str, Any],
        default_size: int,
        default_mean: tuple[float, ...] = _IMAGENET_MEAN,
        default_std: tuple[float, ...] = _IMAGENET_STD,
    ) -> Sam2PilProcessor:
        """From a saved image processor config (SAM 2's or SAM 3's format), defaults where it says nothing."""
        size = config.get("size") or {}
        return cls(
            size=int(size.get("height", default_size)) if isinstance(size, dict) else int(size),
            image_mean=tuple(config.get("image_mean") or default_mean),
            image_std=tuple(config.get("image_std") or default_std),
            rescale_factor=float(config.get("rescale_factor", 1 / 255)),
        )

    def __call__(self, images: Any = None, return_tensors: str = "pt", **kwargs: Any) -> dict[str, Any]:
        import numpy as np
        import torch
        import torch.nn.functional as F

        if kwargs:
            raise TypeError(f"Sam2PilProcessor takes images only (prompts go to the model), got {sorted(kwargs)}")
        batch = images if isinstance(images, (list, tuple)) else [images]
        pixels, sizes = [], []
        for image in batch:
            array = np.asarray(image.convert("RGB"), dtype=np.float32)
            sizes.append(list(array.shape[:2]))
            tensor = torch.from_numpy(array).permute(2, 0, 1)[None]
            resized = F.interpolate(
                tensor, size=(self.target_size, self.target_size), mode="bilinear", align_corners=False, antialias=True
            )
            resized = resized.round().clamp(0, 255)  # torchvision resizes uint8 images to uint8
            mean = torch.tensor(self.image_mean).view(1, 3, 1, 1)
            std = torch.tensor(self.image_std).view(1, 3, 1, 1)
            pixels.append((resized * self.rescale_factor - mean) / std)
        return {"pixel_values": torch.cat(pixels), "original_sizes": torch.tensor(sizes, dtype=torch.long)}

    def post_process_masks(
        self, masks: Any, original_sizes: Any, mask_threshold: float = 0.0, binarize: bool = True, **kwargs: Any
    ) -> list[Any]:
        """Upsample each image's (N, C, h, w) low-res masks to its original size, as `Sam2ImageProcessor` does."""
        import torch.nn.functional as F

        if hasattr(original_sizes, "tolist"):
            original_sizes = original_sizes.tolist()
        out = []
        for i, size in enumerate(original_sizes):
            upsampled = F.interpolate(masks[i], [int(v) for v in size], mode="bilinear", align_corners=False)
            out.append(upsampled > mask_threshold if binarize else upsampled)
        return out


def sam_model_type(model_dir: Path) -> str:
    """The `model_type` of a transformers SAM dir's config.json (`sam` when it names none)."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return str(config.get("model_type") or "sam")


def model_image_size(config: Any) -> int:
    """The square input size of any supported SAM config (SAM 2's vision config has none of its own)."""
    size = getattr(config.vision_config, "image_size", None)
    return size if isinstance(size, int) else int(config.prompt_encoder_config.image_size)


def _load_processor(model_dir: Path, model_type: str, processor_class: Any, image_size: int) -> Any:
    """The dir's own processor where it has one and it loads without torchvision, else the standard one."""
    has_config = (model_dir / "preprocessor_config.json").is_file() or (model_dir / "processor_config.json").is_file()
    if has_config:
        try:
            return processor_class.from_pretrained(model_dir, local_files_only=True)
        # transformers raises ValueError (or ImportError) when the saved image processor is torchvision-only,
        # as SAM 2's always is and other dirs' may be.
        except (ImportError, ValueError) as error:
            logger.info("cannot build %s's own processor (%s); using the built-in one", model_dir, error)
    if model_type == "sam2":
        return Sam2PilProcessor.from_config_file(model_dir / "preprocessor_config.json", image_size)
    standard = default_processor(image_size)
    if model_type == "sam_hq":
        from transformers import SamHQProcessor

        return SamHQProcessor(image_processor=standard.image_processor)
    return standard


def _load_transformers(model_dir: Path, device: str, dtype: torch.dtype | None) -> tuple[Any, Any]:
    import transformers

    model_type = sam_model_type(model_dir)
    if model_type not in TRANSFORMERS_SAM_TYPES:
        raise InvalidInputError(
            f"{model_dir} holds a '{model_type}' model; supported SAM model types: {', '.join(TRANSFORMERS_SAM_TYPES)}"
        )
    model_name, processor_name = TRANSFORMERS_SAM_TYPES[model_type]
    logger.info("loading transformers %s from %s", model_name, model_dir)
    kwargs = {"dtype": dtype} if dtype is not None else {}
    model_class = getattr(transformers, model_name)
    model = model_class.from_pretrained(model_dir, local_files_only=True, **kwargs).to(device).eval()
    processor_class = getattr(transformers, processor_name)
    processor = _load_processor(model_dir, model_type, processor_class, model_image_size(model.config))
    return model, processor


def load_sam_model(path: Path | str, device: str = "cpu", dtype: torch.dtype | None = None) -> tuple[Any, Any]:
    """Load SAM from a transformers dir (SAM, SAM-HQ or SAM 2), a dir holding one `sam_vit_*.pth`, or a `.pth`.

    Returns (model, processor). A transformers dir wins when a directory holds both.
    """
    path = Path(path)
    if path.is_dir() and (path / "config.json").is_file() and any(path.glob("*.safetensors")):
        return _load_transformers(path, device, dtype)
    checkpoint = find_official_checkpoint(path)
    if checkpoint is not None:
        return _load_official(checkpoint, device, dtype)
    missing = path if path.suffix == ".pth" or not path.is_dir() else path / "config.json"
    raise MissingWeightsError(missing, component="sam")
