"""`trainer serve`'s JSON API through Starlette's TestClient, on a model trained on real MNIST:
answers checked against a float64 forward pass written here from the saved weights, against
`trainer predict` on the same picture, and against the run's files; every bad request a 4xx
JSON error after which the server still answers."""

from __future__ import annotations

import base64
import io
import json
import math
import re

import numpy as np
import pytest

pytest.importorskip("starlette")
from PIL import Image  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from trainer.cli.app import app as cli  # noqa: E402
from trainer.data.images import load_digit, prepare_digit  # noqa: E402
from trainer.run.model_io import load_model  # noqa: E402
from trainer.serve.app import MAX_BODY, create_app  # noqa: E402
from trainer.serve.service import Service  # noqa: E402


@pytest.fixture(scope="module")
def service(mnist_run, mnist):
    return Service(mnist_run, data=mnist)


@pytest.fixture(scope="module")
def client(service):
    with TestClient(create_app(service)) as c:
        yield c


def reference_proba(run_dir, digits: np.ndarray) -> np.ndarray:
    """The default network's forward pass in float64, from the safetensors weights: sigmoid,
    then softmax, on (x/255 - mean)/std."""
    model = load_model(run_dir / "model.safetensors")
    assert model.config.activations == ["sigmoid", "softmax"]
    w0, b0, w1, b1 = (p.astype(np.float64) for p in model.params)
    x = (digits.reshape(len(digits), -1) / 255.0 - model.scaling.mean) / model.scaling.std
    h = 1.0 / (1.0 + np.exp(-(x @ w0 + b0)))
    z = h @ w1 + b1
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def decode(image: str) -> np.ndarray:
    """The API's images: base64 of the bytes of a 28x28 uint8 image, row by row."""
    return np.frombuffer(base64.b64decode(image), dtype=np.uint8).reshape(28, 28)


def big(digit: np.ndarray, factor: int = 5) -> np.ndarray:
    """A 28x28 digit blown up to a canvas-sized drawing (140x140 for 5)."""
    return np.kron(digit, np.ones((factor, factor), dtype=np.uint8))


def assert_serving(client: TestClient, mnist) -> None:
    reply = client.post("/api/predict", json={"pixels": mnist.test_images[0].ravel().tolist()})
    assert reply.status_code == 200 and reply.json()["prediction"] == str(mnist.test_labels[0])


def test_predict_matches_a_float64_forward_pass_and_the_labels(client, mnist, mnist_run):
    digits, labels = mnist.test_images[:100], mnist.test_labels[:100]
    replies = [client.post("/api/predict", json={"pixels": d.ravel().tolist()}).json()
               for d in digits]
    seen = np.stack([decode(r["image"]) for r in replies])
    assert np.array_equal(seen, np.stack([prepare_digit(d) for d in digits]))
    proba = np.array([r["probabilities"] for r in replies])
    assert np.allclose(proba, reference_proba(mnist_run, seen), atol=2e-6)  # rounded to 1e-6
    predicted = [int(r["prediction"]) for r in replies]
    assert predicted == [r["index"] for r in replies] == list(proba.argmax(axis=1))
    assert np.mean(np.array(predicted) == labels) >= 0.9


def test_a_canvas_drawing_is_prepared_as_trainer_predict_prepares_the_same_picture(
        client, mnist, mnist_run, tmp_path):
    drawing = big(mnist.test_images[7])  # 140x140, white on black, as the page sends it
    reply = client.post("/api/predict", json={"pixels": drawing.ravel().tolist(),
                                              "width": 140, "height": 140}).json()
    Image.fromarray(drawing).save(tmp_path / "drawing.png")
    assert np.array_equal(decode(reply["image"]), load_digit(tmp_path / "drawing.png"))
    result = CliRunner().invoke(cli, ["predict", str(mnist_run), str(tmp_path / "drawing.png"),
                                      "--json", "--top", "10"])
    assert result.exit_code == 0, result.output
    top = json.loads(result.stdout)[0]
    assert top["prediction"] == reply["prediction"] == str(mnist.test_labels[7])
    for t in top["top"]:
        assert reply["probabilities"][int(t["class"])] == pytest.approx(t["probability"],
                                                                      abs=1e-6)


def test_a_large_drawing_is_answered_too(client, mnist):
    drawing = big(mnist.test_images[2], 36)  # 1008x1008: 2 MB of JSON, parsed off the loop
    body = json.dumps({"pixels": drawing.ravel().tolist(), "width": 1008, "height": 1008})
    assert 2**20 < len(body) < MAX_BODY
    reply = client.post("/api/predict", content=body)
    assert reply.status_code == 200 and reply.json()["prediction"] == str(mnist.test_labels[2])


def test_an_image_file_as_body_or_form_upload(client, mnist):
    # dark ink on white, 200x200: the preparation inverts and scales it back
    picture = Image.fromarray(255 - big(mnist.test_images[1], 7))
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    raw = client.post("/api/predict/image", content=buf.getvalue())
    form = client.post("/api/predict/image", files={"file": ("two.png", buf.getvalue())})
    assert raw.status_code == form.status_code == 200
    assert raw.json() == form.json()
    assert raw.json()["prediction"] == str(mnist.test_labels[1])
    bad = client.post("/api/predict/image", content=b"not an image")
    assert bad.status_code == 422 and "not an image format" in bad.json()["error"]
    assert client.post("/api/predict/image", content=b"").status_code == 400
    huge = io.BytesIO()  # 5000x5000 black: 25 million pixels in a few KB, refused unread
    Image.new("L", (5000, 5000)).save(huge, format="PNG")
    refused = client.post("/api/predict/image", content=huge.getvalue())
    assert refused.status_code == 422 and "image too large" in refused.json()["error"]
    no_file = client.post("/api/predict/image", files={"note": (None, b"a text field")})
    assert no_file.status_code == 400 and "one image file" in no_file.json()["error"]
    empty = ("file", ("", b"", "application/octet-stream"))  # a file field left empty
    photo = ("file", ("two.png", buf.getvalue(), "image/png"))
    for parts in ([photo, empty], [empty, photo]):  # one refusal, in either order
        two = client.post("/api/predict/image", files=parts)
        assert two.status_code == 400, two.json()
        assert "send one image file in the form, and nothing else: got 2 part(s), 1 of them" \
            in two.json()["error"]


def pixels(n: int = 784, value: float | int = 0) -> list:
    return [value] * n


BAD_JSON = [
    ({"pixels": pixels(783)}, "784 values, got 783"),
    ({"pixels": pixels(785)}, "784 values, got 785"),
    ({"pixels": pixels(100), "width": 10, "height": 11}, "10 x 11 = 110 values, got 100"),
    ({"pixels": pixels(784), "width": 4, "height": 196}, "width must be a whole number from 8"),
    ({"pixels": pixels(784), "width": 28.0}, "width must be a whole number"),
    ({"pixels": pixels(784, -1)}, "pixels[0] is -1"),
    ({"pixels": pixels(784, 255.5)}, "pixels[0] is 255.5"),
    ({"pixels": pixels(784, "7")}, "flat list of numbers"),
    ({"pixels": [[0] * 28] * 28}, "784 values, got 28"),
    ({"pixels": pixels(783) + [None]}, "flat list of numbers"),
    ({"pixels": pixels(783) + [10**30]}, "a whole number of 31 digits"),
    ({"pixels": "0" * 784}, "flat list of numbers, got str"),
    ({"pixel": pixels(784)}, "expected a JSON object"),
    ({"pixels": pixels(784), "colour": 1}, "unknown key 'colour'"),
    ([0] * 784, "expected a JSON object"),
    ({"pixels": pixels(784)}, "no digit found: the image is blank"),
]


@pytest.mark.parametrize(("payload", "message"), BAD_JSON)
def test_bad_pixels_get_a_422_json_error_and_the_server_keeps_serving(client, mnist, payload,
                                                                       message):
    reply = client.post("/api/predict", json=payload)
    assert reply.status_code == 422
    assert message in reply.json()["error"] and reply.json()["status"] == 422
    assert_serving(client, mnist)


@pytest.mark.parametrize("digits", [21, 4301, 100_000])
def test_a_huge_integer_is_a_422_about_the_value(client, mnist, digits):
    """Valid JSON: the value is refused (422), without Python's own int-conversion limit."""
    body = json.dumps({"pixels": pixels(783)})[:-2] + ", " + "9" * digits + "]}"
    reply = client.post("/api/predict", content=body)
    assert reply.status_code == 422, reply.json()
    error = reply.json()["error"]
    assert f"a whole number of {digits:,} digits" in error
    assert "sys.set" not in error and "4300" not in error
    assert_serving(client, mnist)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_nan_and_infinity_are_refused(client, mnist, literal):
    good = mnist.test_images[0].ravel().tolist()
    body = json.dumps({"pixels": good}).replace("[0,", f"[{literal},", 1).replace(
        "[0, ", f"[{literal}, ", 1)
    reply = client.post("/api/predict", content=body)
    assert reply.status_code == 422
    assert "pixels[0] is" in reply.json()["error"] and "finite gray level" in reply.json()["error"]
    assert_serving(client, mnist)


@pytest.mark.parametrize("body", [b"hello", b'{"pixels": [1, 2', b"\xff\xfe\x00", b"",
                                  b"[" * 100_000])
def test_a_body_that_is_not_json_gets_400(client, mnist, body):
    reply = client.post("/api/predict", content=body)
    assert reply.status_code == 400 and "not JSON" in reply.json()["error"]
    assert_serving(client, mnist)


def test_a_10_mb_body_gets_413_announced_or_streamed(client, mnist):
    body = b"0" * (10 * 2**20)
    announced = client.post("/api/predict", content=body)
    assert announced.status_code == 413 and "over the limit" in announced.json()["error"]

    def chunks():  # no Content-Length: the limit counts what arrives
        for _ in range(10):
            yield b"1" * 2**20

    streamed = client.post("/api/predict/image", content=chunks())
    assert streamed.status_code == 413 and streamed.json()["status"] == 413
    just_under = client.post("/api/predict", content=b" " * (MAX_BODY - 1))
    assert just_under.status_code == 400  # read (and not JSON): the limit is the limit
    assert_serving(client, mnist)


def test_confusion_matrix_is_the_runs_and_every_cell_holds_its_images(client, mnist, mnist_run):
    metrics = json.loads((mnist_run / "metrics.json").read_text())
    confusion = client.get("/api/confusion").json()
    assert confusion["matrix"] == metrics["confusion_matrix"]
    assert confusion["images"] is True and confusion["note"] == ""
    proba = reference_proba(mnist_run, mnist.test_images)
    for a in range(10):
        for b in range(10):
            cell = client.get(f"/api/confusion/{a}/{b}?limit=200").json()
            assert cell["count"] == metrics["confusion_matrix"][a][b]
            index = [image["index"] for image in cell["images"]]
            assert len(index) == min(cell["count"], 200)
            assert (mnist.test_labels[index] == a).all() and (proba[index].argmax(1) == b).all()
            if a != b:
                for image in cell["images"]:
                    i = image["index"]
                    assert np.array_equal(decode(image["image"]), mnist.test_images[i])
                    assert np.allclose(image["probabilities"], proba[i], atol=2e-6)
                shares = [image["probabilities"][b] for image in cell["images"]]
                assert shares == sorted(shares, reverse=True)  # most confident mistakes first


def test_cells_are_paged(client):
    whole = client.get("/api/confusion/1/1?limit=200").json()
    page = client.get("/api/confusion/1/1?offset=50&limit=30").json()
    assert [i["index"] for i in page["images"]] == [i["index"] for i in whole["images"][50:80]]
    assert page["count"] == whole["count"] > 1000


@pytest.mark.parametrize(("url", "status", "message"), [
    ("/api/confusion/10/3", 404, "no cell (10, 3)"),
    ("/api/confusion/3/99", 404, "no cell (3, 99)"),
    ("/api/confusion/-1/3", 404, "no such page or endpoint"),
    ("/api/confusion/x/3", 404, "no such page or endpoint"),
    ("/api/confusion/4/9?limit=0", 422, "limit 1 to 200"),
    ("/api/confusion/4/9?limit=5000", 422, "limit 1 to 200"),
    ("/api/confusion/4/9?offset=-3", 422, "offset must be >= 0"),
    ("/api/confusion/4/9?offset=two", 400, "offset must be a whole number"),
    ("/api/nothing", 404, "no such page or endpoint"),
])
def test_unknown_cells_and_bad_queries_get_json_errors(client, mnist, url, status, message):
    reply = client.get(url)
    assert reply.status_code == status and message in reply.json()["error"]
    assert_serving(client, mnist)


def test_wrong_method_is_a_json_405(client):
    reply = client.get("/api/predict")
    assert reply.status_code == 405 and reply.json()["error"]


def test_model_info_and_history_come_from_the_run(client, mnist_run):
    metrics = json.loads((mnist_run / "metrics.json").read_text())
    config = json.loads((mnist_run / "config.json").read_text())
    info = client.get("/api/model").json()
    assert info["network"] == "784 -> 128 (sigmoid) -> 10 (softmax)"
    assert info["parameters"] == 784 * 128 + 128 + 128 * 10 + 10
    assert info["config"]["layers"] == config["layers"]
    assert info["test_accuracy"] == metrics["test_accuracy"]
    assert info["training_seconds"] == metrics["total_seconds"]
    assert info["dataset"]["sha256"] == metrics["data"]["sha256"]
    assert info["dataset"]["test_samples"] == 10_000
    assert info["trained_on"] == {"backend": "numpy", "device": "cpu", "dtype": "float32"}
    assert info["serving_on"]["backend"] == "numpy"
    assert info["class_names"] == [str(c) for c in range(10)]
    history = client.get("/api/history").json()
    saved = json.loads((mnist_run / "history.json").read_text())
    assert [h["loss"] for h in history] == [h["loss"] for h in saved]
    assert [h["test_accuracy"] for h in history] == [h["test_accuracy"] for h in saved]


def test_the_page_loads_nothing_from_elsewhere(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    for path in ("/static/app.js", "/static/style.css"):
        asset = client.get(path)
        assert asset.status_code == 200
        # the one absolute URL is the SVG namespace: a name, not something loaded
        urls = set(re.findall(r"[a-z]+://[^\s\"'`)]+", asset.text))
        assert urls <= {"http://www.w3.org/2000/svg"}, urls
    links = re.findall(r'(?:src|href)="([^"]*)"', page.text)
    assert links and all(link.startswith(("/static/", "data:")) for link in links), links
    assert "http" not in page.text and 'src="/static/app.js"' in page.text


def test_without_the_runs_data_the_matrix_stays_and_cells_say_why(mnist_run, idx_dir, mnist):
    service = Service(mnist_run, data_dir=idx_dir)  # another dataset: its hash differs
    assert service.cells is None and "not the data this run was tested on" in (
        service.cells_missing)
    with TestClient(create_app(service)) as client:
        confusion = client.get("/api/confusion").json()
        assert confusion["matrix"] is not None and confusion["images"] is False
        reply = client.get("/api/confusion/4/9")
        assert reply.status_code == 503 and "not the data" in reply.json()["error"]
        assert_serving(client, mnist)


def test_a_run_without_a_model_is_refused_on_load(tmp_path):
    from trainer.errors import DataError

    tmp_path.joinpath("run").mkdir()
    with pytest.raises(DataError, match="no model.safetensors"):
        Service(tmp_path / "run")


def test_probabilities_are_finite_json(client, mnist):
    reply = client.post("/api/predict", json={"pixels": mnist.test_images[3].ravel().tolist()})
    probabilities = reply.json()["probabilities"]
    assert len(probabilities) == 10 and all(math.isfinite(p) for p in probabilities)
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)
