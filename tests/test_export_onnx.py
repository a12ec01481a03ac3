"""`trainer export --format onnx`: the file passes onnx.checker, carries its metadata, and under
onnxruntime (CPU) gives this project's probabilities, on all 10,000 MNIST test images for a
model trained here and for every activation on random weights."""

from __future__ import annotations

import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from typer.testing import CliRunner  # noqa: E402

from trainer.cli.app import app  # noqa: E402
from trainer.core.config import Config  # noqa: E402
from trainer.data.dataset import InputScaling  # noqa: E402
from trainer.run.inference import predict_proba  # noqa: E402
from trainer.run.model_io import SavedModel, load_model  # noqa: E402
from trainer.serve.export import onnx_model  # noqa: E402


def session(model_bytes: bytes):
    return ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])


def test_export_of_a_trained_run_matches_the_forward_pass_on_all_test_images(
        mnist_run, mnist, tmp_path):
    out = tmp_path / "digits.onnx"
    result = CliRunner().invoke(app, ["export", str(mnist_run), "--format", "onnx",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    onnx.checker.check_model(str(out), full_check=True)

    model = load_model(mnist_run / "model.safetensors")
    ours = predict_proba(model, mnist.test_images)  # float32 forward, numpy backend
    sess = session(out.read_bytes())
    (theirs,) = sess.run(None, {"pixels": mnist.test_images.reshape(10_000, 784)
                                .astype(np.float32)})
    assert theirs.shape == (10_000, 10) and theirs.dtype == np.float32
    assert np.abs(theirs - ours).max() <= 1e-5
    assert np.array_equal(theirs.argmax(axis=1), ours.argmax(axis=1))

    meta = sess.get_modelmeta().custom_metadata_map
    metrics = json.loads((mnist_run / "metrics.json").read_text())
    assert json.loads(meta["class_names"]) == [str(c) for c in range(10)]
    assert json.loads(meta["config"]) == json.loads((mnist_run / "config.json").read_text())
    assert json.loads(meta["test_accuracy"]) == metrics["test_accuracy"]
    assert json.loads(meta["input_scaling"])["mean"] == model.scaling.mean
    # the recorded accuracy is the ONNX model's own on the same images
    assert (theirs.argmax(axis=1) == mnist.test_labels).mean() == metrics["test_accuracy"]


def test_export_defaults_to_the_run_dir_and_refuses_other_formats(mnist_run):
    result = CliRunner().invoke(app, ["export", str(mnist_run)])
    assert result.exit_code == 0, result.output
    assert (mnist_run / "model.onnx").is_file()
    bad = CliRunner().invoke(app, ["export", str(mnist_run), "--format", "tflite"])
    assert bad.exit_code == 2 and "--format must be onnx" in bad.output


def test_export_errors_are_clear_and_write_nothing(tmp_path, mnist_run):
    missing = CliRunner().invoke(app, ["export", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "is not a run directory" in missing.output
    into_dir = CliRunner().invoke(app, ["export", str(mnist_run), "--out", str(tmp_path)])
    assert into_dir.exit_code == 2 and "is a directory" in into_dir.output
    damaged = tmp_path / "run"
    damaged.mkdir()
    raw = bytearray((mnist_run / "model.safetensors").read_bytes())
    raw[-1] ^= 1
    (damaged / "model.safetensors").write_bytes(bytes(raw))
    result = CliRunner().invoke(app, ["export", str(damaged)])
    assert result.exit_code == 2 and "checksum mismatch" in result.output
    assert sorted(p.name for p in damaged.iterdir()) == ["model.safetensors"]


def random_model(activations: list[str], sizes: list[int], dtype: str,
                 scaling: InputScaling) -> SavedModel:
    loss = "cross_entropy" if activations[-1] == "softmax" else "mse"
    layers = [{"nodes": n, "activation": a} for n, a in zip(sizes, activations, strict=False)]
    config = Config.from_dict({"layers": layers + [{"nodes": sizes[-1]}], "learning_rate": 0.1,
                               "epochs": 1, "batch_size": 8, "dtype": dtype, "loss": loss})
    rng = np.random.default_rng(len(activations))
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        params += [rng.normal(0, 1.5 / np.sqrt(fan_in), (fan_in, fan_out)).astype(dtype),
                   rng.normal(0, 0.5, fan_out).astype(dtype)]
    return SavedModel(config, params, scaling, [f"c{i}" for i in range(sizes[-1])])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("activations", "scaling"), [
    (["sigmoid", "relu", "leaky_relu", "tanh", "identity", "softmax"],
     InputScaling("standardize", 0.1307, 0.3081)),
    (["leaky_relu", "softmax", "sigmoid"], InputScaling("unit")),  # normalised sigmoid outputs
    (["tanh", "identity"], InputScaling("standardize", 0.5, 0.2)),  # clipped, then normalised
])
def test_every_activation_matches_the_forward_pass(activations, scaling, dtype):
    sizes = [20, 16, 12, 12, 9, 8, 5][:len(activations) + 1]
    model = random_model(activations, sizes, dtype, scaling)
    graph = onnx_model(model)
    onnx.checker.check_model(graph, full_check=True)
    ops = [node.op_type for node in graph.graph.node]
    assert ops.count("Gemm") == len(activations)
    images = np.random.default_rng(1).integers(0, 256, (300, 4, 5), dtype=np.uint8)
    images[0] = 0  # an all-black image: for the clipped outputs possibly an all-zero row
    (theirs,) = session(graph.SerializeToString()).run(
        None, {"pixels": images.reshape(300, 20).astype(dtype)})
    ours = predict_proba(model, images)
    assert theirs.dtype == np.dtype(dtype)
    tol = 1e-5 if dtype == "float32" else 1e-9  # onnxruntime's float64 kernels: ~1e-10
    assert np.abs(theirs - ours).max() <= tol
    assert np.array_equal(theirs.argmax(axis=1), ours.argmax(axis=1))
    assert np.allclose(theirs.sum(axis=1)[ours.sum(axis=1) > 0], 1.0, atol=tol)


def test_export_never_writes_over_a_file_it_did_not_make(tmp_path, mnist_run):
    """A run's own files are refused even with --force (an ONNX file over model.safetensors
    made the run unreadable); another existing file needs --force; an earlier export is
    replaced; a symbolic link is followed to what it would overwrite."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(mnist_run, run_dir, ignore=shutil.ignore_patterns("*.onnx"))
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    link = tmp_path / "link.onnx"
    link.symlink_to(run_dir / "model.safetensors")
    for out in ("model.safetensors", "checkpoint.safetensors", "metrics.json", "config.json",
                "history.svg", link):
        for force in ([], ["--force"]):
            result = CliRunner().invoke(app, ["export", str(run_dir), "--out",
                                              str(run_dir / out), *force])
            assert result.exit_code == 2, result.output
            assert "is a run's own file" in " ".join(result.output.split())
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before
    assert link.is_symlink()
    other = tmp_path / "notes.txt"
    other.write_text("mine")
    refused = CliRunner().invoke(app, ["export", str(run_dir), "--out", str(other)])
    assert refused.exit_code == 2 and "--force to replace it" in " ".join(refused.output.split())
    assert other.read_text() == "mine"
    forced = CliRunner().invoke(app, ["export", str(run_dir), "--out", str(other), "--force"])
    assert forced.exit_code == 0, forced.output
    assert onnx.load(str(other)).producer_name == "trainer"
    again = CliRunner().invoke(app, ["export", str(run_dir)])  # model.onnx: export's own
    assert again.exit_code == 0 and (run_dir / "model.onnx").is_file()
    assert CliRunner().invoke(app, ["export", str(run_dir)]).exit_code == 0
    rest = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    assert rest.pop("model.onnx") and rest == before
