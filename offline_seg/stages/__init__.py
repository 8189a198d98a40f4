"""The stages of the chain, one module each, each behind a small protocol: tagger, captioner, refiner,
detector, segmenter, composer; and the oracle that stands in for recognition and detection with ground truth."""
