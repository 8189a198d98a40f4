#!/usr/bin/env python3
"""Rebuild the larger real evaluation set (COCO val2017 photos with their instance annotations) from
snapshots of public GitHub repositories, byte for byte as recorded in `sources.json`.

The photos' licences (the various Flickr licences of COCO) do not allow shipping them with this project, so
only their sources, sha256 and this script are committed; the set is built outside the repository:

    python scripts/eval_sets/build.py build --mirrors MIRRORS --out /work/data/eval

`MIRRORS` holds one git directory per repository as `owner+name/repo` (each a clone, or a bare snapshot,
e.g. `git clone --mirror https://github.com/owner/name MIRRORS/owner+name/repo`). Every file is read at
its recorded commit and checked against its sha256, so a moved branch cannot change the set.

Layout written (the VOC layout `offline-seg run` / `eval` read), one ground truth per class list:
    coco/JPEGImages/<id>.jpg
    coco/SegmentationClass/<id>.png      COCO category ids (`--preset coco81`), 0 unlabeled, 255 void
    coco/SegmentationClassVOC/<id>.png   the same objects in VOC ids (`--preset voc`): the 20 VOC classes
                                         under their VOC names, every other object background, 255 void
    coco/instances.json                  their COCO annotations (for box AP)
    coco/COCO-MINI.txt, coco/COCO_Tiny.txt  the image names of each of the two subsets

COCO's instance polygons / RLE become one id map per image: instances painted largest first (a smaller
object on top of a larger one keeps its pixels), crowd regions void (255) where no instance covers them.

`record` is how `sources.json` was made (every annotated image of the two subsets whose file is present
and has the annotated size; an image in both is taken once); it is kept so the choice can be checked.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
SOURCES = HERE / "sources.json"

# COCO category id -> VOC id for the 20 VOC classes (COCO names airplane, couch, dining table, motorcycle,
# potted plant, tv for VOC's aeroplane, sofa, dining-table, motorbike, potted-plant, monitor).
COCO_TO_VOC = {5: 1, 2: 2, 16: 3, 9: 4, 44: 5, 6: 6, 3: 7, 17: 8, 62: 9, 21: 10, 67: 11, 18: 12, 19: 13, 4: 14,
               1: 15, 64: 16, 20: 17, 63: 18, 7: 19, 72: 20}
# What `record` reads: (repository, commit, annotation file, image folder).
COCO_SETS = (
    ("Obmutescence/COCO-MINI", "644f29e7c1d2eefd9c4412d39bc5b0ee6fd0afd4", "annotations/instances_val2017.json",
     "val2017"),
    ("zzowenzz/COCO_Tiny", "e7a689f7d6d1a1908df287c3e79eccdadfdba1fe", "annotations/instances_val2017.json",
     "val2017"),
)


def git_dir(mirrors: Path, repo: str) -> Path:
    base = mirrors / repo.replace("/", "+") / "repo"
    return base / ".git" if (base / ".git").is_dir() else base


def read_blob(mirrors: Path, repo: str, commit: str, path: str) -> bytes:
    result = subprocess.run(["git", f"--git-dir={git_dir(mirrors, repo)}", "show", f"{commit}:{path}"],
                            capture_output=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"cannot read {repo}@{commit[:10]}:{path}: {result.stderr.decode().strip()}")
    return result.stdout


def list_tree(mirrors: Path, repo: str, commit: str, folder: str) -> list[str]:
    result = subprocess.run(["git", f"--git-dir={git_dir(mirrors, repo)}", "ls-tree", "--name-only", commit,
                             f"{folder}/"], capture_output=True, text=True, check=True)
    return result.stdout.split()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def source(repo: str, commit: str, path: str, data: bytes) -> dict[str, str]:
    return {"repo": repo, "commit": commit, "path": path, "sha256": sha256(data)}


# --- record: how sources.json was chosen ---------------------------------------------------------------
def record(mirrors: Path) -> dict:
    coco, seen = [], set()
    for repo, commit, annotations_path, folder in COCO_SETS:
        annotations_bytes = read_blob(mirrors, repo, commit, annotations_path)
        annotations = json.loads(annotations_bytes)
        present = set(list_tree(mirrors, repo, commit, folder))
        entries = []
        for info in sorted(annotations["images"], key=lambda i: i["id"]):
            path = f"{folder}/{info['file_name']}"
            if info["id"] in seen or path not in present:
                continue
            data = read_blob(mirrors, repo, commit, path)
            if Image.open(io.BytesIO(data)).size != (info["width"], info["height"]):
                print(f"skip {path}: size differs from its annotation", file=sys.stderr)
                continue
            seen.add(info["id"])
            entries.append({"name": Path(info["file_name"]).stem, "id": info["id"],
                            "image": source(repo, commit, path, data)})
        coco.append({"annotations": source(repo, commit, annotations_path, annotations_bytes), "images": entries})
    return {"coco": coco}


# --- build ----------------------------------------------------------------------------------------------
def fetch_checked(mirrors: Path, entry: dict) -> bytes:
    data = read_blob(mirrors, entry["repo"], entry["commit"], entry["path"])
    if sha256(data) != entry["sha256"]:
        raise SystemExit(f"sha256 mismatch: {entry['repo']}@{entry['commit'][:10]}:{entry['path']}")
    return data


def coco_id_map(annotations: list[dict], height: int, width: int) -> np.ndarray:
    """COCO category ids per pixel: 0 where no instance, instances painted largest first, crowds void."""
    from pycocotools import mask as mask_utils

    label = np.zeros((height, width), np.uint8)
    crowd = np.zeros((height, width), bool)
    for ann in sorted(annotations, key=lambda a: -a["area"]):
        segmentation = ann["segmentation"]
        if isinstance(segmentation, list):
            rles = mask_utils.frPyObjects(segmentation, height, width)
            rle = mask_utils.merge(rles)
        elif isinstance(segmentation["counts"], list):
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = segmentation
        mask = mask_utils.decode(rle).astype(bool)
        if ann.get("iscrowd"):
            crowd |= mask
        else:
            label[mask] = ann["category_id"]
    label[crowd & (label == 0)] = 255
    return label


def build(mirrors: Path, out: Path) -> None:
    sources = json.loads(SOURCES.read_text(encoding="utf-8"))
    for sub in ("coco/JPEGImages", "coco/SegmentationClass", "coco/SegmentationClassVOC"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    voc_table = np.zeros(256, np.uint8)
    voc_table[255] = 255
    for coco_id, voc_id in COCO_TO_VOC.items():
        voc_table[coco_id] = voc_id
    count = 0
    merged: dict[str, list] = {"images": [], "annotations": [], "categories": []}
    names: dict[str, list[str]] = {}  # subset (repository name) -> its image names
    for group in sources["coco"]:
        annotations = json.loads(fetch_checked(mirrors, group["annotations"]))
        by_image: dict[int, list[dict]] = {}
        for ann in annotations["annotations"]:
            by_image.setdefault(ann["image_id"], []).append(ann)
        infos = {info["id"]: info for info in annotations["images"]}
        merged["categories"] = annotations["categories"]
        for item in group["images"]:
            info = infos[item["id"]]
            (out / "coco/JPEGImages" / f"{item['name']}.jpg").write_bytes(fetch_checked(mirrors, item["image"]))
            label = coco_id_map(by_image.get(item["id"], []), info["height"], info["width"])
            Image.fromarray(label).save(out / "coco/SegmentationClass" / f"{item['name']}.png")
            Image.fromarray(voc_table[label]).save(out / "coco/SegmentationClassVOC" / f"{item['name']}.png")
            names.setdefault(group["annotations"]["repo"].split("/")[1], []).append(item["name"])
            merged["images"].append(info)
            merged["annotations"].extend(by_image.get(item["id"], []))
            count += 1
    (out / "coco/instances.json").write_text(json.dumps(merged), encoding="utf-8")
    for subset, stems in names.items():  # each half alone, e.g. to choose a setting on one and check it on the other
        (out / f"coco/{subset}.txt").write_text("\n".join(stems) + "\n", encoding="utf-8")
    print(f"wrote {count} COCO images with ground truth (COCO and VOC ids) to {out / 'coco'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("build", "record"))
    parser.add_argument("--mirrors", type=Path, required=True, help="folder of owner+name/repo git directories")
    parser.add_argument("--out", type=Path, help="build: where the set goes (outside the repository)")
    args = parser.parse_args(argv)
    if args.command == "record":
        SOURCES.write_text(json.dumps(record(args.mirrors), indent=1) + "\n", encoding="utf-8")
        print(f"wrote {SOURCES}")
    else:
        if args.out is None:
            parser.error("build needs --out DIR")
        build(args.mirrors, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
