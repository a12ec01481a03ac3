"""A run's model as an ONNX graph from raw pixels to probabilities: the input scaling, every
layer (Gemm) and activation, and the softmax, with the class names, config and test accuracy in
its metadata. Checked with onnx.checker before it is written."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from trainer.core.activations import LEAKY_SLOPE
from trainer.errors import UsageError
from trainer.fileio import atomic_write_bytes
from trainer.run.inference import load_run
from trainer.run.model_io import SavedModel
from trainer.run.rundir import CLAIM

OPSET = 17  # onnxruntime 1.14 and later run it; ReduceSum takes its axes as an input from 13
IR_VERSION = 8  # the IR that opset 17 needs, so older runtimes load the file too
INPUT, OUTPUT = "pixels", "probabilities"
OPS = {"sigmoid": ("Sigmoid", {}), "relu": ("Relu", {}), "tanh": ("Tanh", {}),
       "leaky_relu": ("LeakyRelu", {"alpha": LEAKY_SLOPE}), "softmax": ("Softmax", {"axis": -1}),
       "identity": ("Identity", {})}


# what a run writes into its directory: never an export's place, even with force
RUN_OWN = ("config.json", "metrics.json", "history.json", "history.csv", "history.svg",
           "confusion.svg", CLAIM)
MAX_ONNX_PEEK = 1 << 30  # an existing file larger than this is not read to see who made it


def check_out(out: str | Path, force: bool = False) -> None:
    """Refuse (UsageError) to write over a file that export did not make: a run's own files
    never; another existing file only with `force`. An ONNX file trainer made is replaced."""
    path = Path(out)
    target = path.resolve()  # through a symbolic link to where the bytes would have gone
    if target.is_dir():
        raise UsageError(f"--out {path} is a directory; name a file")
    own = target.name in RUN_OWN or target.suffix == ".safetensors"
    if own and (target.parent / "config.json").is_file():
        raise UsageError(f"--out {path} is a run's own file ({target.name} in "
                         f"{target.parent}): export writes a file of its own, e.g. "
                         f"{target.parent / 'model.onnx'}")
    if target.exists() and not _made_by_export(target) and not force:
        raise UsageError(f"--out {path} exists and was not written by trainer export: "
                         f"choose another --out, or --force to replace it")


def _made_by_export(path: Path) -> bool:
    """Whether `path` is an ONNX model that trainer wrote (so a new export may replace it)."""
    try:
        if not path.is_file() or path.stat().st_size > MAX_ONNX_PEEK:
            return False
        return onnx.load(str(path), load_external_data=False).producer_name == "trainer"
    except Exception:  # not ONNX at all (protobuf's own DecodeError), or unreadable
        return False


def export_onnx(run_dir: str | Path, out: str | Path | None = None, force: bool = False
                ) -> Path:
    """Write the run's model as ONNX (default RUN_DIR/model.onnx), atomically; its path.
    Never over a run's own files, nor over another file unless `force` (check_out)."""
    path = Path(out) if out is not None else Path(run_dir) / "model.onnx"
    check_out(path, force)
    model, metrics = load_run(run_dir)
    graph = onnx_model(model, metrics)
    onnx.checker.check_model(graph, full_check=True)
    atomic_write_bytes(path, graph.SerializeToString())
    return path


def onnx_model(model: SavedModel, metrics: dict[str, Any] | None = None) -> onnx.ModelProto:
    """The graph: pixels (batch, inputs) of raw gray levels 0..255 -> probabilities."""
    config, scaling = model.config, model.scaling
    dtype = np.dtype(config.dtype)
    elem = helper.np_dtype_to_tensor_dtype(dtype)
    consts = {  # InputScaling.apply's own arithmetic: subtract 255*mean, divide by 255*std
        "shift": np.asarray(255.0 * scaling.mean, dtype=dtype),
        "spread": np.asarray(255.0 * scaling.std, dtype=dtype),
    }
    nodes = [helper.make_node("Sub", [INPUT, "shift"], ["centred"]),
             helper.make_node("Div", ["centred", "spread"], ["a0"])]
    last = len(config.activations) - 1
    for i, act in enumerate(config.activations):
        consts[f"W{i}"] = model.params[2 * i].astype(dtype)
        consts[f"b{i}"] = model.params[2 * i + 1].astype(dtype)
        nodes.append(helper.make_node("Gemm", [f"a{i}", f"W{i}", f"b{i}"], [f"z{i}"],
                                      name=f"layer{i}"))
        op, attrs = OPS[act]
        out = OUTPUT if i == last and act == "softmax" else f"a{i + 1}"
        nodes.append(helper.make_node(op, [f"z{i}"], [out], name=f"{act}{i}", **attrs))
    if config.activations[-1] != "softmax":
        nodes += _normalise(f"a{last + 1}", consts, dtype)
    classes = config.sizes[-1]
    graph = helper.make_graph(
        nodes, "trainer_mlp",
        [helper.make_tensor_value_info(INPUT, elem, ["batch", config.sizes[0]])],
        [helper.make_tensor_value_info(OUTPUT, elem, ["batch", classes])],
        initializer=[numpy_helper.from_array(v, k) for k, v in consts.items()])
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                   producer_name="trainer",
                                   producer_version=importlib.metadata.version("trainer"),
                                   doc_string=_doc(model))
    onnx_model.ir_version = IR_VERSION
    helper.set_model_props(onnx_model, _metadata(model, metrics or {}))
    return onnx_model


def _normalise(out: str, consts: dict[str, np.ndarray], dtype: np.dtype) -> list[Any]:
    """predict_proba's rule for outputs that are not a softmax: clip at 0, divide by the sum
    (floored at the dtype's tiniest normal number, so an all-zero row stays zero)."""
    consts["axes"] = np.asarray([1], dtype=np.int64)
    consts["tiny"] = np.asarray(np.finfo(dtype).tiny, dtype=dtype)
    return [helper.make_node("Relu", [out], ["clipped"]),
            helper.make_node("ReduceSum", ["clipped", "axes"], ["total"], keepdims=1),
            helper.make_node("Max", ["total", "tiny"], ["floor"]),
            helper.make_node("Div", ["clipped", "floor"], [OUTPUT])]


def _doc(model: SavedModel) -> str:
    side = int(round(model.config.sizes[0] ** 0.5))
    shape = f"{side}x{side} images flattened" if side * side == model.config.sizes[0] else (
        "images flattened")
    return (f"trainer MLP {model.config.describe()}. Input '{INPUT}': raw gray levels 0 to 255 "
            f"({shape}, white digit on black, prepared as MNIST); output '{OUTPUT}': one row "
            f"of {model.config.sizes[-1]} class probabilities per image.")


def _metadata(model: SavedModel, metrics: dict[str, Any]) -> dict[str, str]:
    accuracy = metrics.get("test_accuracy")
    return {"class_names": json.dumps(model.class_names),
            "config": json.dumps(model.config.to_dict()),
            "input_scaling": json.dumps(model.scaling.to_dict()),
            "test_accuracy": json.dumps(accuracy if isinstance(accuracy, float) else None),
            "test_samples": json.dumps(metrics.get("test_samples")
                                       if isinstance(metrics.get("test_samples"), int) else None),
            "run_id": model.run_id}
