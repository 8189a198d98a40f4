"""Convert the TF.js CenterNet of npm `@vladmandic/human` (models/centernet.json + .bin) to ONNX.

Runs only inside a throwaway environment holding tensorflow-cpu and tf2onnx (`offline-seg weights pull
centernet` makes one); it never imports offline_seg, and neither converter is a dependency of the product.

A TF.js graph model is a TensorFlow GraphDef written as JSON with its constants moved to a binary file
(here stored as float16) and a few attributes that TF.js does not read left out. This script puts the
constants back, restores those attributes, checks the graph in TensorFlow and hands it to tf2onnx.

    python centernet_convert.py MODEL.json OUT.onnx [--reference IMAGES.npy OUTPUTS.npy]

`--reference` also runs TensorFlow on a (N, 512, 512, 3) float32 batch and saves its detections, so that
the caller can compare the ONNX model's output with TensorFlow's on the same images.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

INPUT = "tower_0/images"
OUTPUT = "tower_0/detections"
OPSET = 13


def _dtype_enum(tf, name: str) -> int:
    return tf.as_dtype(name).as_datatype_enum


def load_graph_def(model_json: Path):
    """The GraphDef of a TF.js graph model, with its weights and the attributes TF.js strips."""
    import tensorflow as tf
    from google.protobuf import json_format

    spec = json.loads(model_json.read_text(encoding="utf-8"))
    graph_def = json_format.ParseDict({"node": spec["modelTopology"]["node"]}, tf.compat.v1.GraphDef())
    weights = _read_weights(model_json.parent, spec["weightsManifest"])
    float_enum = _dtype_enum(tf, "float32")
    int_enum = _dtype_enum(tf, "int32")
    for node in graph_def.node:
        if node.op == "Const":
            if node.name not in weights:
                raise SystemExit(f"no weights for constant {node.name}")
            node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(weights[node.name]))
            node.attr["dtype"].type = _dtype_enum(tf, weights[node.name].dtype.name)
        elif node.op == "_FusedConv2D":  # TF.js drops the types of the fused arguments; TensorFlow needs them
            node.attr["TArgs"].list.type.extend([float_enum] * int(node.attr["num_args"].i))
        elif node.op == "FusedDepthwiseConv2dNative":
            node.op = "_FusedDepthwiseConv2dNative"  # TensorFlow's (internal) name of the same op
            del node.attr["explicit_paddings"]  # not an attribute of TensorFlow's depthwise op
        elif node.op == "TopKV2":
            node.attr["Tk"].type = int_enum
            node.attr["index_type"].type = int_enum
    return graph_def


def _read_weights(folder: Path, manifest: list[dict]) -> dict[str, np.ndarray]:
    """Every constant of the manifest, in its group's files, dequantized to its original dtype."""
    arrays: dict[str, np.ndarray] = {}
    for group in manifest:
        data = b"".join((folder / path).read_bytes() for path in group["paths"])
        offset = 0
        for weight in group["weights"]:
            count = int(np.prod(weight["shape"])) if weight["shape"] else 1
            quant = weight.get("quantization")
            stored = np.dtype(quant["dtype"] if quant else weight["dtype"])
            if quant and quant["dtype"] not in ("float16",):
                raise SystemExit(f"unsupported quantization {quant} of {weight['name']}")
            size = count * stored.itemsize
            values = np.frombuffer(data, dtype=stored, count=count, offset=offset)
            offset += size
            arrays[weight["name"]] = values.astype(weight["dtype"]).reshape(weight["shape"])
        if offset != len(data):
            raise SystemExit(f"weights file size {len(data)} does not match the manifest ({offset} bytes)")
    return arrays


def run_tensorflow(graph_def, image: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as session:
        return session.run(f"{OUTPUT}:0", {f"{INPUT}:0": image})


def convert(model_json: Path, out: Path, reference: tuple[Path, Path] | None = None) -> None:
    if not hasattr(np, "product"):  # tf2onnx 1.17 still calls np.product (removed in NumPy 2)
        np.product = np.prod
    import tf2onnx

    graph_def = load_graph_def(model_json)
    model, _ = tf2onnx.convert.from_graph_def(graph_def, input_names=[f"{INPUT}:0"],
                                              output_names=[f"{OUTPUT}:0"], opset=OPSET)
    out.write_bytes(model.SerializeToString())
    print(f"wrote {out} ({out.stat().st_size} bytes)")
    if reference is not None:
        images = np.load(reference[0]).astype(np.float32)
        outputs = np.stack([run_tensorflow(graph_def, image[None])[0] for image in images])
        np.save(reference[1], outputs)
        print(f"wrote TensorFlow's detections of {len(images)} image(s) to {reference[1]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_json", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--reference", type=Path, nargs=2, metavar=("IMAGES", "OUTPUTS"),
                        help="(N, 512, 512, 3) float32 .npy in; TensorFlow's detections .npy out")
    args = parser.parse_args(argv)
    convert(args.model_json, args.out, args.reference)
    return 0


if __name__ == "__main__":
    sys.exit(main())
