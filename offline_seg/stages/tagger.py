"""Stage 1a: image tags (RAM++), the open-vocabulary half of what the pre-refinement LLM reads.

Large images are tagged tile by tile: RAM++ sees a 384x384 resize, where small objects of a big photo
vanish; the union of the tiles' tags recovers them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, Sequence, runtime_checkable

import numpy as np
from PIL import Image

from offline_seg.errors import MissingWeightsError, OfflineSegError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "ram_plus_swin_large_14m.pth"
TAG_LIST_NAME = "ram_tag_list.txt"
THRESHOLD_NAME = "ram_tag_list_threshold.txt"
DEFAULT_THRESHOLD = 0.68  # upstream RAM_plus(threshold=0.68), used where no per-tag value is given
MAX_TILE_SIDE = 640


@runtime_checkable
class Tagger(Protocol):
    """Anything that names what is in an image."""

    def tag(self, image: Image.Image) -> list[str]: ...


def split_tiles(image: Image.Image, max_side: int = MAX_TILE_SIDE) -> list[Image.Image]:
    """The image itself if both sides are <= max_side, else its 2x2 quarters, split again recursively.

    Tiles come in row-major, depth-first order, so the result is deterministic. A side of 1 px is
    not halved (a 1 x 5000 strip is split along its length only).
    """
    if max_side < 1:
        raise ValueError("max_side must be >= 1")
    width, height = image.size
    if width <= max_side and height <= max_side:
        return [image]
    xs = [0, width // 2, width] if width > 1 else [0, width]
    ys = [0, height // 2, height] if height > 1 else [0, height]
    tiles: list[Image.Image] = []
    for top, bottom in zip(ys, ys[1:]):
        for left, right in zip(xs, xs[1:]):
            tiles.extend(split_tiles(image.crop((left, top, right, bottom)), max_side))
    return tiles


def preprocess(images: Sequence[Image.Image], image_size: int) -> torch.Tensor:
    """Upstream `get_transform`: RGB, bilinear resize to a square, ImageNet mean/std. -> (B, 3, S, S)."""
    import torch

    from offline_seg.models.ram_plus import IMAGENET_MEAN, IMAGENET_STD

    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)
    std = np.asarray(IMAGENET_STD, dtype=np.float32)
    arrays = []
    for image in images:
        resized = image.convert("RGB").resize((image_size, image_size), Image.Resampling.BILINEAR)
        array = (np.asarray(resized, dtype=np.float32) / 255.0 - mean) / std
        arrays.append(array.transpose(2, 0, 1))
    return torch.from_numpy(np.stack(arrays))


def _read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


class RamPlusTagger:
    """RAM++ tags from a weights sub-directory, loaded on the first `tag` call.

    The directory holds `ram_plus_swin_large_14m.pth` (or one other *.pth), `ram_tag_list.txt` and
    optionally `ram_tag_list_threshold.txt` (one threshold per tag; 0.68 for every tag without it).
    """

    def __init__(
        self,
        model_dir: Path | str,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
        max_side: int = MAX_TILE_SIDE,
        batch_size: int = 8,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.device = device
        self.dtype = dtype
        self.max_side = max_side
        self.batch_size = max(1, batch_size)
        self._model = None
        self._tags: list[str] = []

    # --- files ------------------------------------------------------------------------------------
    def checkpoint_path(self) -> Path:
        """The official file name if present, else the single *.pth in the directory."""
        official = self.model_dir / CHECKPOINT_NAME
        if official.is_file():
            return official
        candidates = sorted(self.model_dir.glob("*.pth")) if self.model_dir.is_dir() else []
        if not candidates:
            raise MissingWeightsError(official, component="ram_plus")
        if len(candidates) > 1:
            names = ", ".join(p.name for p in candidates)
            raise OfflineSegError(f"several RAM++ checkpoints in {self.model_dir} ({names}); keep one or name "
                                  f"it {CHECKPOINT_NAME}")
        return candidates[0]

    def _load(self) -> None:
        import torch

        from offline_seg.models.ram_plus_checkpoint import load_ram_plus

        checkpoint = self.checkpoint_path()
        tag_file = self.model_dir / TAG_LIST_NAME
        if not tag_file.is_file():
            raise MissingWeightsError(tag_file, component="ram_plus")
        tags = _read_lines(tag_file)
        while tags and not tags[-1].strip():  # tolerate a trailing blank line
            tags.pop()

        dtype = self.dtype
        if dtype is None:  # half precision only where it is fast and safe
            dtype = torch.float16 if str(self.device).startswith("cuda") else torch.float32
        from offline_seg.models.loading import loading

        with loading("ram_plus", checkpoint):
            model = load_ram_plus(checkpoint, device=self.device, dtype=dtype)
        if len(tags) != model.config.num_tags:
            raise OfflineSegError(
                f"{tag_file} lists {len(tags)} tags but {checkpoint.name} has {model.config.num_tags}"
            )

        threshold_file = self.model_dir / THRESHOLD_NAME
        thresholds = [DEFAULT_THRESHOLD] * len(tags)
        if threshold_file.is_file():
            values = [float(line) for line in _read_lines(threshold_file) if line.strip()]
            if len(values) > len(tags):
                raise OfflineSegError(f"{threshold_file} has {len(values)} thresholds for {len(tags)} tags")
            thresholds[: len(values)] = values  # upstream overrides the default position by position
        else:
            logger.info("no %s in %s: threshold %.2f for every tag", THRESHOLD_NAME, self.model_dir,
                        DEFAULT_THRESHOLD)
        model.set_thresholds(thresholds)
        self._model = model
        self._tags = tags
        logger.info("RAM++ tagger ready: %d tags on %s (%s)", len(tags), self.device, dtype)

    @property
    def model(self):
        if self._model is None:
            self._load()
        return self._model

    @property
    def tag_list(self) -> list[str]:
        _ = self.model
        return list(self._tags)

    # --- inference ---------------------------------------------------------------------------------
    def _hits(self, tiles: Sequence[Image.Image]) -> np.ndarray:
        """(len(tiles), num_tags) booleans, in batches of `batch_size`."""
        import torch

        model = self.model
        dtype = next(model.parameters()).dtype
        rows = []
        with torch.inference_mode():
            for start in range(0, len(tiles), self.batch_size):
                pixels = preprocess(tiles[start : start + self.batch_size], model.config.image_size)
                rows.append(model.predict(pixels.to(device=self.device, dtype=dtype)).cpu().numpy())
        return np.concatenate(rows, axis=0)

    def tag_batch(self, images: Sequence[Image.Image]) -> list[list[str]]:
        """Tags of each image: the union over its tiles, in tag-list order."""
        model_tags = self.tag_list
        tiles: list[Image.Image] = []
        owners: list[int] = []
        for index, image in enumerate(images):
            parts = split_tiles(image.convert("RGB"), self.max_side)
            tiles.extend(parts)
            owners.extend([index] * len(parts))
        if not tiles:
            return []
        hits = self._hits(tiles)
        owner = np.asarray(owners)
        results = []
        for index in range(len(images)):
            union = hits[owner == index].any(axis=0)
            results.append([model_tags[i] for i in np.flatnonzero(union)])
        return results

    def tag(self, image: Image.Image) -> list[str]:
        tags = self.tag_batch([image])[0]
        logger.debug("RAM++ tags: %s", " | ".join(tags))
        return tags
