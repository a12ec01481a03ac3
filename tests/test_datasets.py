"""Datasets by name: the real download code against local stand-ins for each publisher."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from fake_publishers import Behaviour, make_publishers, serve
from helpers import isolate

from trainer.data.dataset import load_dataset, read_dataset
from trainer.data.datasets import DATASETS, EMNIST_SPLITS, read_mapping
from trainer.data.download import Silent
from trainer.data.publishers import fetch_dataset
from trainer.errors import DataError, FetchError, UsageError


@pytest.fixture(scope="module")
def pub():
    return make_publishers(n_train=300, n_test=60, letters_train=520)


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch) -> None:
    isolate(monkeypatch, tmp_path)


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def same_data(data, expected) -> None:
    for key in ("train_images", "train_labels", "test_images", "test_labels"):
        assert np.array_equal(getattr(data, key), getattr(expected, key)), key


@pytest.mark.parametrize("name", ["fashion-mnist", "kmnist"])
def test_files_are_fetched_verified_and_cached_with_their_names(pub, tmp_path, name) -> None:
    cache = tmp_path / "cache" / name
    behaviour = Behaviour()
    with serve(pub.files, behaviour) as url:
        source = fetch_dataset(pub.spec(name), cache, mirror=url)
    assert listing(cache.parent) == [name]  # no staging or partial folder left
    assert listing(cache) == sorted([*DATASETS[name].files, "manifest.json"])
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["dataset"] == name and manifest["source"] == source
    for file in DATASETS[name].files:
        body = pub.files[f"{name}/{file}"]
        assert (cache / file).read_bytes() == body
        sha = hashlib.sha256(body).hexdigest()
        assert manifest["files"][file] == sha  # what every load re-checks
        # where the publisher gives only an MD5, the SHA-256 of the same verified bytes
        assert manifest["verified"][file] == {"url": f"{url}{name}/{file}",
                                              "md5": hashlib.md5(body).hexdigest(),
                                              "sha256": sha}
    data = read_dataset(cache, source="cache", dataset=name)
    same_data(data, pub.upright[name])
    assert data.class_names == list(DATASETS[name].classes) and data.num_classes == 10
    assert data.hash_status == f"manifest verified ({source})"
    assert [path for path, _ in behaviour.requests] == [f"{name}/{f}" for f in
                                                         DATASETS[name].files]


def test_class_names_are_the_publishers() -> None:
    assert DATASETS["fashion-mnist"].classes[:3] == ("T-shirt/top", "Trouser", "Pullover")
    assert DATASETS["fashion-mnist"].classes[-1] == "Ankle boot"
    assert DATASETS["kmnist"].classes == ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re",
                                          "wo")


def test_emnist_archive_fills_every_split(pub, tmp_path) -> None:
    cache = tmp_path / "cache"
    with serve(pub.files) as url:
        fetch_dataset(pub.spec("emnist-letters"), cache / "emnist-letters", mirror=url)
    assert listing(cache) == sorted(f"emnist-{s}" for s in EMNIST_SPLITS)  # the zip is gone
    for split in EMNIST_SPLITS:
        spec = DATASETS[f"emnist-{split}"]
        assert listing(cache / spec.name) == sorted([*spec.cached_files, "manifest.json"])
        manifest = json.loads((cache / spec.name / "manifest.json").read_text())
        zipped = pub.files["emnist/gzip.zip"]
        assert manifest["verified"]["gzip.zip"]["sha256"] == hashlib.sha256(zipped).hexdigest()
        data = read_dataset(cache / spec.name, source="cache", dataset=spec)
        same_data(data, pub.upright[spec.name])  # transposed back, letters counted from 0
    letters = read_dataset(cache / "emnist-letters", dataset="emnist-letters")
    assert letters.num_classes == 26 and letters.class_names[:2] == ["A/a", "B/b"]
    assert letters.class_names[-1] == "Z/z" and int(letters.train_labels.max()) == 25
    balanced = read_dataset(cache / "emnist-balanced", dataset="emnist-balanced")
    assert balanced.num_classes == 47 and balanced.class_names[36:38] == ["a", "b"]
    assert read_dataset(cache / "emnist-byclass", dataset="emnist-byclass").num_classes == 62


def test_emnist_images_are_transposed_on_load(pub, tmp_path) -> None:
    """An image that is not symmetric: the stored (NIST) orientation is the transpose."""
    with serve(pub.files) as url:
        fetch_dataset(pub.spec("emnist-digits"), tmp_path / "emnist-digits", mirror=url)
    data = read_dataset(tmp_path / "emnist-digits", dataset="emnist-digits")
    raw = read_dataset(tmp_path / "emnist-digits",
                       dataset=dataclasses.replace(DATASETS["emnist-digits"], transposed=False))
    assert not np.array_equal(raw.train_images, data.train_images)
    assert np.array_equal(raw.train_images.transpose(0, 2, 1), data.train_images)


def test_wrong_hash_caches_nothing(pub, tmp_path) -> None:
    spec = dataclasses.replace(pub.spec("fashion-mnist"), md5={
        **pub.spec("fashion-mnist").md5, "t10k-images-idx3-ubyte.gz": "0" * 32})
    with serve(pub.files) as url, pytest.raises(FetchError) as err:
        fetch_dataset(spec, tmp_path / "c" / "fashion-mnist", mirror=url)
    message = str(err.value)
    assert "MD5 mismatch: expected " + "0" * 32 in message and "discarded" in message
    assert "--data-dir FOLDER --dataset fashion-mnist" in message
    assert listing(tmp_path / "c") == []  # no cache, no staging, no partial download


def test_wrong_archive_hash_caches_no_split(pub, tmp_path) -> None:
    spec = dataclasses.replace(pub.spec("emnist-letters"), md5={"gzip.zip": "0" * 32})
    with serve(pub.files) as url, pytest.raises(FetchError, match="MD5 mismatch"):
        fetch_dataset(spec, tmp_path / "c" / "emnist-letters", mirror=url)
    assert listing(tmp_path / "c") == []


def test_truncated_download_resumes_from_where_it_stopped(pub, tmp_path) -> None:
    """A cut-short archive is resumed by the next fetch of any split it holds."""
    cache = tmp_path / "c"
    behaviour = Behaviour(cut_after=100_000)
    with serve(pub.files, behaviour) as url:
        with pytest.raises(FetchError, match="incomplete download.*next fetch resumes"):
            fetch_dataset(pub.spec("emnist-mnist"), cache / "emnist-mnist", mirror=url)
        assert listing(cache) == [".emnist-partial"]  # no cache written
        part = cache / ".emnist-partial" / "gzip.zip.part"
        assert part.read_bytes() == pub.files["emnist/gzip.zip"][:100_000]
        behaviour.cut_after = None
        fetch_dataset(pub.spec("emnist-digits"), cache / "emnist-digits", mirror=url)
    assert behaviour.requests[-1] == ("emnist/gzip.zip", "bytes=100000-")  # resumed
    same_data(read_dataset(cache / "emnist-mnist", dataset="emnist-mnist"),
              pub.upright["emnist-mnist"])
    assert listing(cache) == sorted(f"emnist-{s}" for s in EMNIST_SPLITS)


class Interrupt(Silent):
    """Ctrl-C after `after` bytes of a download."""

    def __init__(self, after: int) -> None:
        self.after, self.seen = after, 0

    def advance(self, task, amount: int) -> None:
        self.seen += amount
        if self.seen >= self.after:
            raise KeyboardInterrupt


def test_interrupted_download_resumes_and_leaves_the_cache_as_it_was(pub, tmp_path) -> None:
    name = "fashion-mnist"
    cache = tmp_path / "c" / name
    with serve(pub.files) as url:
        fetch_dataset(pub.spec(name), cache, mirror=url)  # a first, complete cache
    before = {p.name: p.read_bytes() for p in cache.iterdir()}
    behaviour = Behaviour()
    with serve(pub.files, behaviour) as url:
        with pytest.raises(KeyboardInterrupt):
            fetch_dataset(pub.spec(name), cache, mirror=url, progress=Interrupt(100_000))
        assert {p.name: p.read_bytes() for p in cache.iterdir()} == before
        assert listing(cache.parent) == [f".{name}-partial", name]
        kept = (cache.parent / f".{name}-partial" / "train-images-idx3-ubyte.gz.part").stat()
        assert 100_000 <= kept.st_size < len(pub.files[f"{name}/train-images-idx3-ubyte.gz"])
        fetch_dataset(pub.spec(name), cache, mirror=url)
    assert (f"{name}/train-images-idx3-ubyte.gz", f"bytes={kept.st_size}-") in behaviour.requests
    assert listing(cache.parent) == [name]
    same_data(read_dataset(cache, dataset=name), pub.upright[name])


def test_server_that_ignores_ranges_restarts_cleanly(pub, tmp_path) -> None:
    cache = tmp_path / "c" / "kmnist"
    with serve(pub.files, Behaviour(cut_after=50_000)) as url, pytest.raises(FetchError):
        fetch_dataset(pub.spec("kmnist"), cache, mirror=url)
    behaviour = Behaviour(ranges=False)
    with serve(pub.files, behaviour) as url:
        fetch_dataset(pub.spec("kmnist"), cache, mirror=url)
    assert ("kmnist/train-images-idx3-ubyte.gz", "bytes=50000-") in behaviour.requests
    same_data(read_dataset(cache, dataset="kmnist"), pub.upright["kmnist"])


def test_a_partial_file_that_is_not_a_prefix_is_discarded_then_fetched_afresh(pub,
                                                                              tmp_path) -> None:
    cache = tmp_path / "c" / "kmnist"
    partial = cache.parent / ".kmnist-partial"
    partial.mkdir(parents=True)
    (partial / "train-images-idx3-ubyte.gz.part").write_bytes(b"\0" * 1000)  # not the file
    with serve(pub.files) as url:
        with pytest.raises(FetchError, match="MD5 mismatch.*discarded"):
            fetch_dataset(pub.spec("kmnist"), cache, mirror=url)
        assert listing(cache.parent) == []
        fetch_dataset(pub.spec("kmnist"), cache, mirror=url)
    same_data(read_dataset(cache, dataset="kmnist"), pub.upright["kmnist"])


def test_a_partial_file_as_long_as_the_file_starts_again(pub, tmp_path) -> None:
    """The server answers 416 (range not satisfiable): the download starts from nothing."""
    cache = tmp_path / "c" / "kmnist"
    partial = cache.parent / ".kmnist-partial"
    partial.mkdir(parents=True)
    body = pub.files["kmnist/t10k-labels-idx1-ubyte.gz"]
    (partial / "t10k-labels-idx1-ubyte.gz.part").write_bytes(b"x" * (len(body) + 5))
    with serve(pub.files) as url:
        fetch_dataset(pub.spec("kmnist"), cache, mirror=url)
    assert (cache / "t10k-labels-idx1-ubyte.gz").read_bytes() == body


def test_server_error_is_reported_and_nothing_cached(pub, tmp_path) -> None:
    behaviour = Behaviour(status={"fashion-mnist/train-labels-idx1-ubyte.gz": 503})
    with serve(pub.files, behaviour) as url, pytest.raises(FetchError) as err:
        fetch_dataset(pub.spec("fashion-mnist"), tmp_path / "c" / "fashion-mnist", mirror=url)
    assert "could not fetch Fashion-MNIST" in str(err.value) and "503" in str(err.value)
    assert listing(tmp_path / "c") == []


def test_redirect_is_followed(pub, tmp_path) -> None:
    moved = {f"fashion-mnist/{n}": f"moved/{n}" for n in DATASETS["fashion-mnist"].files}
    files = pub.files | {f"moved/{n}": pub.files[f"fashion-mnist/{n}"]
                         for n in DATASETS["fashion-mnist"].files}
    behaviour = Behaviour(redirects=moved)
    with serve(files, behaviour) as url:
        fetch_dataset(pub.spec("fashion-mnist"), tmp_path / "fashion-mnist", mirror=url)
    assert [p for p, _ in behaviour.requests][:2] == ["fashion-mnist/train-images-idx3-ubyte.gz",
                                                      "moved/train-images-idx3-ubyte.gz"]
    same_data(read_dataset(tmp_path / "fashion-mnist", dataset="fashion-mnist"),
              pub.upright["fashion-mnist"])


def test_mirror_from_the_environment_and_load_dataset_fetches(pub, monkeypatch) -> None:
    monkeypatch.setitem(DATASETS, "kmnist", pub.spec("kmnist"))
    with serve(pub.files) as url:
        monkeypatch.setenv("TRAINER_MIRROR", url)
        data = load_dataset(dataset="kmnist")
    assert data.source == f"fetched: ROIS-CODH ({url}kmnist/)" and data.name == "kmnist"
    again = load_dataset(dataset="kmnist", fetch=False)  # from the cache, no server
    assert again.source == "cache" and again.class_names[:2] == ["o", "ki"]


def test_unknown_dataset_names_the_choices() -> None:
    with pytest.raises(UsageError, match="unknown dataset 'cifar'; choose one of mnist, "
                                         "fashion-mnist, kmnist, emnist-digits"):
        load_dataset(dataset="cifar")


def test_data_dir_is_read_as_the_named_dataset(pub, tmp_path) -> None:
    """EMNIST unzipped by hand (the publisher's names, and its mapping) works with --data-dir;
    so does the standard naming; a folder without the mapping is refused, naming it."""
    folder = tmp_path / "unzipped"
    folder.mkdir()
    with zipfile.ZipFile(io.BytesIO(pub.files["emnist/gzip.zip"])) as zf:
        for name in DATASETS["emnist-letters"].cached_files:
            (folder / name).write_bytes(zf.read(f"gzip/{name}"))
    data = load_dataset(folder, dataset="emnist-letters")
    same_data(data, pub.upright["emnist-letters"])
    assert data.source == "data-dir" and data.class_names[0] == "A/a"
    (folder / "emnist-letters-mapping.txt").unlink()
    with pytest.raises(DataError, match="emnist-letters-mapping.txt: cannot read the class"):
        load_dataset(folder, dataset="emnist-letters")


def test_a_cache_folder_read_as_another_dataset_is_refused(pub, tmp_path) -> None:
    with serve(pub.files) as url:
        fetch_dataset(pub.spec("fashion-mnist"), tmp_path / "fashion-mnist", mirror=url)
    with pytest.raises(DataError, match="holds 'fashion-mnist' .*pass --dataset fashion-mnist"):
        load_dataset(tmp_path / "fashion-mnist")  # read as MNIST, the default
    assert load_dataset(tmp_path / "fashion-mnist", dataset="fashion-mnist").name == \
        "fashion-mnist"
    labels = tmp_path / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:-1])
    with pytest.raises(DataError, match=r"SHA-256 does not match .*run `trainer data fetch "
                                        r"--force --dataset fashion-mnist`"):
        load_dataset(tmp_path / "fashion-mnist", dataset="fashion-mnist")


def test_labels_beyond_the_classes_suggest_another_dataset(pub, tmp_path) -> None:
    with serve(pub.files) as url:
        fetch_dataset(pub.spec("emnist-letters"), tmp_path / "c" / "emnist-letters", mirror=url)
    folder = tmp_path / "c" / "emnist-letters"
    (folder / "manifest.json").unlink()  # a user folder, with the standard names
    names = DATASETS["emnist-letters"].files
    standard = DATASETS["mnist"].files
    for published, plain in zip(names, standard, strict=True):
        (folder / published).rename(folder / plain)
    with pytest.raises(DataError, match=r"expected a class below 10.*\(read as mnist; pass "
                                        r"--dataset NAME"):
        load_dataset(folder)
    assert load_dataset(folder, dataset="emnist-letters").num_classes == 26


@pytest.mark.parametrize(("text", "error"), [
    ("1 65 97\n3 67 99\n", "line 2: expected label 2 .*found 3"),
    ("1 65 x\n", "line 1: expected `label code"),
    ("1 7\n", "line 1: character codes must be printable"),
    ("", "expected 1 to 256 classes in the mapping, found 0"),
])
def test_bad_mapping_files_are_refused(tmp_path, text: str, error: str) -> None:
    path = tmp_path / "m.txt"
    path.write_text(text)
    with pytest.raises(DataError, match=error):
        read_mapping(path, offset=1)


def test_mapping_of_letters_and_balanced(tmp_path) -> None:
    path = tmp_path / "m.txt"
    path.write_text("0 48\n1 49\n2 65\n3 97\n")
    assert read_mapping(path) == ("0", "1", "A", "a")
    path.write_text("1 65 97\n2 66 98\n")
    assert read_mapping(path, offset=1) == ("A/a", "B/b")


def test_trainer_data_dir_is_mnists_only(pub, tmp_path, monkeypatch) -> None:
    """$TRAINER_DATA_DIR (MNIST's folder) is never read as another dataset."""
    with serve(pub.files) as url:
        fetch_dataset(pub.spec("mnist"), tmp_path / "mine", mirror=url)
    monkeypatch.setenv("TRAINER_DATA_DIR", str(tmp_path / "mine"))
    assert load_dataset(fetch=False).path == tmp_path / "mine"
    with pytest.raises(DataError, match=r"no data found in .*/kmnist: run `trainer data fetch "
                                        r"--dataset kmnist`"):
        load_dataset(dataset="kmnist", fetch=False)
