#!/usr/bin/env python
"""Draft phrase -> label candidates for the refinement dev set (the curated set is `post.tsv`).

Phrases come from RAM++'s tag list and LVIS's category synonyms; labels from WordNet 3.0's hypernym
closure of the synsets each class list's annotation guidelines name (`CLASS_SYNSETS`). A phrase whose
first noun sense falls under exactly one class is a positive draft; a concrete noun none of whose
senses falls under any class is a negative draft (background). Every draft was then read by hand:
`post.tsv` keeps what the guidelines support and drops what they leave ambiguous.

    python scripts/refine_dev/candidates.py --ram ram_tag_list.txt --lvis lvis_v1_categories.py \
        [--coco coco_to_synset.json] --preset voc > drafts-voc.tsv

Needs nltk and the WordNet 3.0 database (Debian `wordnet-base` in ~/nltk_data/corpora/wordnet).
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

# Class -> (synsets whose hyponym closure is the class, synsets the guidelines exclude).
CLASS_SYNSETS: dict[str, dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    "voc": {  # VOC2007 annotation guidelines, "Guidelines on categorisation"
        "aeroplane": (("airplane.n.01", "glider.n.01"), ()),
        "bicycle": (("bicycle.n.01", "tricycle.n.01", "unicycle.n.01"), ()),
        "bird": (("bird.n.01",), ()),
        "boat": (("boat.n.01", "ship.n.01"), ()),
        "bottle": (("bottle.n.01",), ()),
        "bus": (("bus.n.01",), ()),
        "car": (("car.n.01",), ("ambulance.n.01", "cruiser.n.01", "go-kart.n.01")),
        "cat": (("domestic_cat.n.01",), ()),
        "chair": (("chair.n.01",), ("wheelchair.n.01",)),
        "cow": (("cattle.n.01",), ()),
        "dining-table": (("dining_table.n.01", "kitchen_table.n.01"), ()),
        "dog": (("dog.n.01",), ()),
        "horse": (("horse.n.01", "ass.n.03", "mule.n.01"), ()),
        "motorbike": (("motorcycle.n.01", "moped.n.01", "motor_scooter.n.01"), ()),
        "person": (("person.n.01",), ()),
        "potted-plant": (("houseplant.n.01",), ()),
        "sheep": (("sheep.n.01",), ()),
        "sofa": (("sofa.n.01",), ()),
        "train": (("train.n.01", "locomotive.n.01", "passenger_car.n.01"), ("streetcar.n.01",)),
        "monitor": (("television_receiver.n.01", "monitor.n.04", "display.n.06"), ()),
    },
    "cityscapes": {  # Cityscapes class definitions (dataset overview) and cityscapesScripts labels.py
        "road": (("road.n.01", "street.n.01"), ()),
        "sidewalk": (("sidewalk.n.01", "curb.n.01", "traffic_island.n.01"), ()),
        "building": (("building.n.01",), ()),
        "wall": (("wall.n.01",), ()),
        "fence": (("fence.n.01",), ()),
        "pole": (("pole.n.01", "lamppost.n.01", "telephone_pole.n.01", "signpost.n.01"), ()),
        "traffic-light": (("traffic_light.n.01",), ()),
        "traffic-sign": (("street_sign.n.01", "traffic_sign.n.01"), ()),
        "tree": (("tree.n.01", "hedge.n.01", "shrub.n.01"), ()),
        "terrain": (("grass.n.01", "lawn.n.01", "soil.n.02", "sand.n.01"), ()),
        "sky": (("sky.n.01", "cloud.n.02"), ()),
        "person": (("person.n.01",), ("rider.n.01", "driver.n.01", "skateboarder.n.01")),
        "rider": (("rider.n.01", "skateboarder.n.01"), ()),
        "car": (("car.n.01",), ()),
        "truck": (("truck.n.01",), ()),
        "bus": (("bus.n.01",), ()),
        "train": (("train.n.01", "streetcar.n.01", "locomotive.n.01"), ()),
        "motorcycle": (("motorcycle.n.01", "moped.n.01", "motor_scooter.n.01"), ()),
        "bicycle": (("bicycle.n.01",), ()),
    },
}


def coco_classes(coco_to_synset: Path) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """COCO-81 from LVIS's official COCO -> WordNet map (lvis-api data/coco_to_synset.json)."""
    import json

    data = json.loads(coco_to_synset.read_text())
    return {name.replace(" ", "-"): ((entry["synset"],), ()) for name, entry in data.items()}


def closure(wn, names):
    found = set()
    for name in names:
        try:
            root = wn.synset(name)
        except Exception:  # LVIS names a few synsets WordNet 3.0 lacks (stop_sign.n.01): those classes match by name
            print(f"no synset {name}", file=sys.stderr)
            continue
        found.add(root)
        found.update(root.closure(lambda s: s.hyponyms() + s.instance_hyponyms()))
    return found


def class_of(wn, classes, sense):
    hits = [label for label, (inside, outside) in classes.items() if sense in inside and sense not in outside]
    return hits


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ram", type=Path, required=True)
    parser.add_argument("--lvis", type=Path, required=True)
    parser.add_argument("--coco", type=Path, help="lvis-api data/coco_to_synset.json (for coco81)")
    parser.add_argument("--preset", required=True)
    args = parser.parse_args()
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    WordNetCorpusReader.map_wn = lambda self, version="3.0": None  # no OMW mapping files needed
    from nltk.corpus import wordnet as wn

    spec = coco_classes(args.coco) if args.preset == "coco81" else CLASS_SYNSETS[args.preset]
    classes = {label: (closure(wn, inside), closure(wn, outside)) for label, (inside, outside) in spec.items()}
    text = args.lvis.read_text()
    start = text.index("LVIS_CATEGORIES = [{") + len("LVIS_CATEGORIES = ")
    lvis = ast.literal_eval(text[start: text.rindex("]") + 1])
    phrases: dict[str, tuple[str, object]] = {}
    for tag in args.ram.read_text().splitlines():
        tag = tag.strip()
        if tag and re.fullmatch(r"[a-z][a-z \-]*", tag):
            phrases.setdefault(tag, ("ram++", None))
    for category in lvis:
        for synonym in category["synonyms"]:
            phrase = re.sub(r"_\(.*\)$", "", synonym).replace("_", " ")
            try:
                phrases.setdefault(phrase, ("lvis", wn.synset(category["synset"])))
            except Exception:
                continue
    for phrase, (source, sense) in sorted(phrases.items()):
        senses = [sense] if sense is not None else wn.synsets(phrase.replace(" ", "_"), pos="n")
        if not senses:
            continue
        first = class_of(wn, classes, senses[0])
        every = {label for s in wn.synsets(phrase.replace(" ", "_"), pos="n") + senses for label in class_of(wn, classes, s)}
        if len(first) == 1 and every <= set(first):
            print(f"{args.preset}\t{phrase}\t{first[0]}\t{source}:{senses[0].name()}")
        elif not every and senses[0].lexname() in ("noun.artifact", "noun.animal", "noun.food", "noun.plant", "noun.object"):
            print(f"{args.preset}\t{phrase}\tbackground\t{source}:{senses[0].name()}")


if __name__ == "__main__":
    main()
