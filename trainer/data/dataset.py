"""The dataset: where it is (data dir, env, cache, fetch), loading and checking it, scaling."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np
import numpy.typing as npt

from trainer.data.datasets import (
    DEFAULT,
    STANDARD_NAMES,
    DatasetSpec,
    get_spec,
    read_mapping,
)
from trainer.data.download import FetchProgress
from trainer.data.fetch import MANIFEST, sha256_file
from trainer.data.idx import read_images, read_labels
from trainer.data.publishers import fetch_dataset
from trainer.errors import ConfigError, DataError

if TYPE_CHECKING:
    from trainer.core.config import Config

NUM_CLASSES = 10
ENV_DATA_DIR = "TRAINER_DATA_DIR"
ScalingMethod = Literal["standardize", "unit"]
_HIST_CHUNK = 1 << 22  # pixels per bincount: bounds the int64 temporary to 32 MiB


@dataclass(frozen=True, eq=False)  # eq=False: comparing arrays field by field has no single truth
class Dataset:
    """Training and test images (uint8, N x rows x cols) with their labels (uint8, N)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int = NUM_CLASSES
    source: str = "in memory"  # "data-dir", "cache" or "fetched: <which source>"
    path: Path | None = None  # the folder read; None for data built in memory
    hash_status: str = "not checked"
    name: str = ""  # the dataset it was read as (datasets.py's names); "" for data in memory
    names: tuple[str, ...] = ()  # the classes' names; empty: their numbers

    @property
    def image_shape(self) -> tuple[int, int]:
        return self.train_images.shape[1], self.train_images.shape[2]

    @property
    def input_size(self) -> int:
        return self.image_shape[0] * self.image_shape[1]

    def fingerprint(self) -> str:
        """SHA-256 of the four arrays (shapes and bytes): the same data, whatever its folder."""
        h = hashlib.sha256()
        for a in (self.train_images, self.train_labels, self.test_images, self.test_labels):
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(np.ascontiguousarray(a).data)
        return h.hexdigest()

    @property
    def class_names(self) -> list[str]:
        """The classes' names (T-shirt/top, ...), or their numbers where they have none."""
        return list(self.names) if self.names else [str(c) for c in range(self.num_classes)]

    def describe(self) -> str:
        """`the dataset fashion-mnist`, or `the data` where it has no name."""
        return f"the dataset {self.name}" if self.name else "the data"

    def limit(self, train: int | None = None, test: int | None = None) -> Dataset:
        """The first `train` training and `test` test examples (None keeps all), for quick runs."""
        return dataclasses.replace(
            self,
            train_images=self.train_images[:train],
            train_labels=self.train_labels[:train],
            test_images=self.test_images[:test],
            test_labels=self.test_labels[:test],
        )


def cache_dir() -> Path:
    """The trainer's cache: $XDG_CACHE_HOME/trainer, else ~/.cache/trainer."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    # the XDG spec says to ignore a relative path here
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "trainer"


def mnist_cache_dir() -> Path:
    return dataset_cache_dir(DEFAULT)


def dataset_cache_dir(dataset: str | DatasetSpec = DEFAULT) -> Path:
    """The dataset's own folder in the cache: ~/.cache/trainer/fashion-mnist, ..."""
    return cache_dir() / get_spec(dataset).name


def find_data_dir(data_dir: Path | None = None,
                  dataset: str | DatasetSpec = DEFAULT) -> tuple[Path, str] | None:
    """The data folder and how it was found ("data-dir" or "cache"); None if it must be fetched.

    Order: `data_dir` (the --data-dir option), then $TRAINER_DATA_DIR (for MNIST, the default
    dataset, only: another dataset named by --dataset is never read from MNIST's folder), then
    the dataset's folder in the cache.
    """
    spec = get_spec(dataset)
    origin = "--data-dir"
    if data_dir is None and spec.name == DEFAULT and os.environ.get(ENV_DATA_DIR):
        data_dir, origin = Path(os.environ[ENV_DATA_DIR]), ENV_DATA_DIR
    if data_dir is not None:
        try:
            data_dir = data_dir.expanduser()
        except RuntimeError:  # ~user with no such user, or no home directory to expand ~ to
            raise DataError(
                f"{data_dir}: cannot expand '~' (no such user or no home directory) "
                f"(from {origin})"
            ) from None
        if not data_dir.is_dir():
            raise DataError(f"{data_dir}: no such data folder (from {origin})")
        return data_dir, "data-dir"
    cache = dataset_cache_dir(spec)
    return (cache, "cache") if has_data_files(cache, spec) else None


def has_data_files(folder: Path, dataset: str | DatasetSpec = DEFAULT) -> bool:
    """Whether `folder` holds any of the dataset's files or a manifest (if so, it must be
    whole)."""
    spec = get_spec(dataset)
    names = {*STANDARD_NAMES, *spec.files, *(n.removesuffix(".gz") for n in spec.files)}
    return any((folder / name).exists() for name in (*names, *(f"{n}.gz" for n in names),
                                                     MANIFEST))


def load_dataset(
    data_dir: Path | None = None,
    *,
    dataset: str | DatasetSpec = DEFAULT,
    fetch: bool = True,
    progress: FetchProgress | None = None,
) -> Dataset:
    """Find, fetch if needed (and allowed), read and check the dataset's four IDX files."""
    spec = get_spec(dataset)
    found = find_data_dir(data_dir, spec)
    if found is None:
        cache = dataset_cache_dir(spec)
        if not fetch:
            hint = "" if spec.name != DEFAULT else f" or set {ENV_DATA_DIR}"
            raise DataError(
                f"no data found in {cache}: run `trainer data fetch --dataset {spec.name}`, or "
                f"pass --data-dir{hint} to a folder holding the four IDX files"
            )
        found = cache, "fetched: " + fetch_dataset(spec, cache, progress=progress)
    folder, source = found
    return read_dataset(folder, source=source, dataset=spec)


def read_dataset(
    folder: Path, *, source: str = "data-dir", dataset: str | DatasetSpec = DEFAULT
) -> Dataset:
    """Read the dataset's four files in `folder` (and its class mapping, if it has one),
    checking the manifest if there is one; EMNIST's images are transposed and its letters'
    labels counted from 0 here."""
    spec = get_spec(dataset)
    read_manifest(folder, spec.name)  # another dataset's folder: say so before anything else
    paths = standard_files(folder, spec)
    mapping = folder / spec.mapping if spec.mapping else None
    manifest_source = verify_manifest(folder, [*paths, *([mapping] if mapping else [])],
                                      dataset=spec.name)
    if manifest_source is not None:
        status = f"manifest verified ({manifest_source})"
    else:
        status = "no manifest (user folder)" if source == "data-dir" else "no manifest"
    names = read_mapping(mapping, spec.label_offset) if mapping else spec.classes
    num_classes = len(names)
    train_x, test_x = read_images(paths[0]), read_images(paths[2])
    train_y = _labels(paths[1], spec, num_classes)
    test_y = _labels(paths[3], spec, num_classes)
    if spec.transposed:
        train_x = np.ascontiguousarray(train_x.transpose(0, 2, 1))
        test_x = np.ascontiguousarray(test_x.transpose(0, 2, 1))
    _check_pair(train_x, train_y, paths[0], paths[1])
    _check_pair(test_x, test_y, paths[2], paths[3])
    if test_x.shape[1:] != train_x.shape[1:]:
        raise DataError(
            f"{paths[2]}: image shape differs from the training set's ({paths[0]}): "
            f"expected {train_x.shape[1:]}, found {test_x.shape[1:]}"
        )
    return Dataset(train_x, train_y, test_x, test_y, num_classes, source, folder, status,
                   spec.name, tuple(names))


def _labels(path: Path, spec: DatasetSpec, num_classes: int) -> np.ndarray:
    """A label file, each label checked against the classes; EMNIST letters' 1-26 as 0-25."""
    try:
        labels = read_labels(path, num_classes + spec.label_offset)
    except DataError as e:
        if spec.name == DEFAULT:  # a folder of another dataset read as MNIST, most likely
            raise DataError(f"{e} (read as {spec.name}; pass --dataset NAME for another "
                            f"dataset)") from None
        raise
    if spec.label_offset:
        if labels.size and int(labels.min()) < spec.label_offset:
            raise DataError(f"{path}: label {int(np.argmax(labels < spec.label_offset))} is "
                            f"{int(labels.min())}: {spec.name}'s labels run from "
                            f"{spec.label_offset} to {num_classes + spec.label_offset - 1}")
        labels = labels - np.uint8(spec.label_offset)
    return labels


def standard_files(folder: Path, dataset: str | DatasetSpec = DEFAULT) -> tuple[Path, ...]:
    """The dataset's four files in `folder` (plain or .gz), in STANDARD_NAMES order: named as
    its publisher names them, or with the standard names."""
    spec = get_spec(dataset)
    found, missing = [], []
    for name, published in zip(STANDARD_NAMES, spec.files, strict=True):
        candidates = dict.fromkeys((published.removesuffix(".gz"), published, name, f"{name}.gz"))
        path = next((folder / c for c in candidates if (folder / c).is_file()), None)
        if path is None:
            missing.append(name if published.removesuffix(".gz") == name else
                           f"{published.removesuffix('.gz')} (or {name})")
        else:
            found.append(path)
    if missing:
        raise DataError(
            f"{folder}: missing {', '.join(missing)} (plain or .gz): expected the four files "
            f"{', '.join(n.removesuffix('.gz') for n in spec.files)} of {spec.name}"
        )
    return tuple(found)


def _check_pair(images: np.ndarray, labels: np.ndarray, images_path: Path, labels_path: Path):
    if len(labels) != len(images):
        raise DataError(
            f"{labels_path}: label count does not match {images_path}: "
            f"expected {len(images)} labels, found {len(labels)}"
        )
    if len(images) == 0:
        raise DataError(f"{images_path}: no images: expected at least 1, found 0")


def verify_manifest(folder: Path, used: Sequence[Path] = (),
                    dataset: str | None = None) -> str | None:
    """Re-hash the files listed in folder/manifest.json, which must list every file in `used`
    (and be of `dataset`, if given: a manifest without one is MNIST's).

    Returns the manifest's source, or None if there is no manifest.
    """
    manifest = read_manifest(folder, dataset)
    if manifest is None:
        return None
    path, files = folder / MANIFEST, manifest["files"]
    unlisted = [p.name for p in used if p.name not in files]
    if unlisted:
        raise DataError(f"{path}: does not list {', '.join(unlisted)}, which would be read")
    again = "" if manifest["dataset"] == DEFAULT else f" --dataset {manifest['dataset']}"
    for name, expected in files.items():
        file = folder / Path(str(name)).name  # only files in the manifest's own folder
        found = sha256_file(file)
        if found != expected:
            raise DataError(
                f"{file}: SHA-256 does not match {path}: expected {expected}, found {found}; "
                f"run `trainer data fetch --force{again}` to download it again"
            )
    return str(manifest["source"])


def read_manifest(folder: Path, dataset: str | None = None) -> dict[str, object] | None:
    """folder/manifest.json as {"source", "dataset", "files"}, or None if there is none;
    DataError if it is unreadable, or if `dataset` is given and it names another dataset."""
    path = folder / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        files = {str(k): v for k, v in dict(manifest["files"]).items()}
        found = {"source": str(manifest["source"]), "files": files,
                 "dataset": str(manifest.get("dataset", DEFAULT))[:40]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise DataError(f"{path}: unreadable manifest: {type(e).__name__}: {e}") from e
    if dataset is not None and found["dataset"] != dataset:
        raise DataError(f"{folder} holds {found['dataset']!r} (its manifest says so), not "
                        f"{dataset!r}: pass --dataset {found['dataset']}, or another folder")
    return found


def class_counts(labels: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """How many examples of each class (int64, length num_classes)."""
    return np.bincount(np.asarray(labels).reshape(-1), minlength=num_classes)


def pixel_stats(images: np.ndarray) -> tuple[float, float]:
    """Mean and (population) standard deviation of all pixels / 255, in float64.

    Computed from a histogram of the 256 byte values, so it is exact and needs no float copy
    of the images.
    """
    if images.dtype != np.uint8:
        raise DataError(f"pixel statistics need uint8 images, found {images.dtype}")
    flat = images.reshape(-1)
    hist = np.zeros(256, dtype=np.int64)
    for start in range(0, flat.size, _HIST_CHUNK):
        hist += np.bincount(flat[start : start + _HIST_CHUNK], minlength=256)
    if flat.size == 0:
        raise DataError("pixel statistics need at least one pixel, found none")
    values = np.arange(256, dtype=np.float64) / 255.0
    mean = float(hist @ values) / flat.size
    var = float(hist @ (values - mean) ** 2) / flat.size
    return mean, math.sqrt(var)


@dataclass(frozen=True)
class InputScaling:
    """How pixels become network inputs: (x / 255 - mean) / std, saved with the model."""

    method: ScalingMethod = "standardize"
    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self) -> None:
        if self.method not in get_args(ScalingMethod):
            allowed = ", ".join(get_args(ScalingMethod))
            raise ConfigError(f"input scaling must be one of {allowed}, got {self.method!r}")
        for key in ("mean", "std"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"input scaling {key} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ConfigError(f"input scaling {key} must be finite, got {value!r}")
        if self.std <= 0:
            raise ConfigError(f"input scaling std must be positive, got {self.std!r}")

    @classmethod
    def fit(cls, train_images: np.ndarray, method: ScalingMethod = "standardize") -> InputScaling:
        """Statistics of the full training set: one scalar mean and std, as neural-net-rs does."""
        if method == "unit":
            return cls("unit", 0.0, 1.0)
        if method != "standardize":
            return cls(method)  # __post_init__ names the allowed methods
        mean, std = pixel_stats(train_images)
        if std == 0:
            raise DataError("cannot standardize: every training pixel has the same value (std 0)")
        return cls("standardize", mean, std)

    def apply(self, images: np.ndarray, dtype: npt.DTypeLike = np.float32) -> np.ndarray:
        """uint8 images (N, rows, cols) -> scaled (N, rows * cols) inputs of `dtype`."""
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim < 2:
            raise DataError(
                f"expected uint8 images of shape (N, rows, cols), found {images.dtype} "
                f"with shape {images.shape}"
            )
        x = images.reshape(len(images), int(np.prod(images.shape[1:]))).astype(dtype)
        # (x/255 - mean)/std folded into one shift and one divide; for "unit" that is exactly x/255
        x -= x.dtype.type(255.0 * self.mean)
        x /= x.dtype.type(255.0 * self.std)
        return x

    def to_dict(self) -> dict[str, str | float]:
        return {"method": self.method, "mean": self.mean, "std": self.std}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> InputScaling:
        """The inverse of to_dict, refusing anything else (missing or unknown keys, bad values)."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"input scaling must be an object, got {type(data).__name__}")
        keys = {"method", "mean", "std"}
        if set(data) != keys:
            raise ConfigError(
                f"input scaling needs exactly the keys {', '.join(sorted(keys))}, "
                f"got {', '.join(sorted(map(str, data))) or 'none'}"
            )
        return cls(data["method"], data["mean"], data["std"])  # type: ignore[arg-type]


def check_split(config: Config, n: int) -> None:
    if config.validation_size(n) >= n:
        raise ConfigError(f"validation_split {config.validation_split:g} leaves no training "
                          f"images out of {n}")


def split(config: Config, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(training, validation) indices: a seeded random share held out, both in data order."""
    check_split(config, n)
    n_val = config.validation_size(n)
    if n_val == 0:
        return np.arange(n), np.arange(0)
    order = rng.permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])
