"""The datasets known by name: where each is published, its pinned hashes, its classes' names."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from trainer.errors import DataError, UsageError

# The standard names, in the order (train images, train labels, test images, test labels).
STANDARD_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
GZ_NAMES = tuple(f"{n}.gz" for n in STANDARD_NAMES)
DEFAULT = "mnist"
EMNIST_SPLITS = ("digits", "letters", "balanced", "byclass", "bymerge", "mnist")
MAX_MAPPING_BYTES = 64 << 10  # the largest real mapping (byclass, 62 lines) is under 1 KB
MAX_CLASSES = 256  # labels are unsigned bytes


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: how to get it (files or an archive, with their MD5s) and how to read it."""

    name: str
    title: str
    publisher: str
    url: str  # the folder holding `files`, or the archive itself
    md5: dict[str, str]  # file (or archive) name -> the MD5 the publisher gives
    # file (or archive) name -> its length in bytes (TensorFlow Datasets' url_checksums): a
    # server that sends more is cut off there
    sizes: dict[str, int] = field(default_factory=dict)
    files: tuple[str, ...] = GZ_NAMES  # as published, in STANDARD_NAMES order
    classes: tuple[str, ...] = ()  # empty: read from `mapping`
    mapping: str | None = None  # EMNIST: the file that names the classes
    archive_members: str = ""  # EMNIST: the folder in the archive holding `files` and `mapping`
    transposed: bool = False  # EMNIST stores each image transposed relative to MNIST
    label_offset: int = 0  # EMNIST letters: labels run 1-26, read as 0-25
    mirror_folder: str = ""  # where a mirror (TRAINER_MIRROR) keeps its files

    @property
    def archive(self) -> str | None:
        """The archive's file name, if the files come in one."""
        return self.url.rsplit("/", 1)[-1] if self.archive_members else None

    @property
    def cached_files(self) -> tuple[str, ...]:
        """What the cache folder holds besides its manifest."""
        return self.files + ((self.mapping,) if self.mapping else ())


def _md5s(files: tuple[str, ...], sums: tuple[str, ...]) -> dict[str, str]:
    return dict(zip(files, sums, strict=True))


def _emnist(split: str) -> DatasetSpec:
    stem = f"emnist-{split}"
    files = tuple(f"{stem}-{n.replace('t10k', 'test')}" for n in GZ_NAMES)
    return DatasetSpec(
        name=stem, title=f"EMNIST {split}", publisher="NIST",
        url="https://biometrics.nist.gov/cs_links/EMNIST/gzip.zip",
        # NIST publishes this MD5 of the whole archive (about 540 MB), nothing per member
        md5={"gzip.zip": "58c8d27c78d21e728a6bc7b3cc06412e"}, sizes={"gzip.zip": 561_753_746},
        files=files, mapping=f"{stem}-mapping.txt", archive_members="gzip/", transposed=True,
        label_offset=1 if split == "letters" else 0, mirror_folder="emnist")


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist", title="MNIST", publisher="the official mirrors",
        url="https://ossci-datasets.s3.amazonaws.com/mnist/",
        # torchvision's published MD5s of the official .gz files
        md5=_md5s(GZ_NAMES, (
            "f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
            "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c")),
        sizes=dict(zip(GZ_NAMES, (9_912_422, 28_881, 1_648_877, 4_542), strict=True)),
        classes=tuple(str(d) for d in range(10)), mirror_folder="mnist"),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist", title="Fashion-MNIST", publisher="Zalando Research",
        url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",  # the README's link
        # the MD5s in Zalando Research's README
        md5=_md5s(GZ_NAMES, (
            "8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
            "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310")),
        sizes=dict(zip(GZ_NAMES, (26_421_880, 29_515, 4_422_102, 5_148), strict=True)),
        classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                 "Sneaker", "Bag", "Ankle boot"),
        mirror_folder="fashion-mnist"),
    "kmnist": DatasetSpec(
        name="kmnist", title="Kuzushiji-MNIST", publisher="ROIS-CODH",
        url="https://codh.rois.ac.jp/kmnist/dataset/kmnist/",
        # ROIS-CODH publishes no hashes; these are torchvision's MD5s of its files
        md5=_md5s(GZ_NAMES, (
            "bdb82020997e1d708af4cf47b453dcf7", "e144d726b3acfaa3e44228e80efcd344",
            "5c965bf0a639b31b8f53240b1b52f4d7", "7320c461ea6c1c855c0b718fb2a4b134")),
        sizes=dict(zip(GZ_NAMES, (18_165_135, 29_497, 3_041_136, 5_120), strict=True)),
        # the romanised readings of お き す つ な は ま や れ を (kmnist_classmap.csv)
        classes=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
        mirror_folder="kmnist"),
    **{f"emnist-{split}": _emnist(split) for split in EMNIST_SPLITS},
}
NAMES = tuple(DATASETS)


def get_spec(name: str | DatasetSpec) -> DatasetSpec:
    """The dataset called `name` (a spec is returned as it is); UsageError naming the choices."""
    if isinstance(name, DatasetSpec):
        return name
    spec = DATASETS.get(name.lower()) if isinstance(name, str) else None
    if spec is None:
        raise UsageError(f"unknown dataset {str(name)!r:.60}; choose one of {', '.join(NAMES)}")
    return spec


def siblings(spec: DatasetSpec) -> list[DatasetSpec]:
    """The datasets that come in the same archive (every EMNIST split), `spec` first."""
    if spec.archive is None:
        return [spec]
    return [spec, *(dataclasses.replace(s, md5=spec.md5, url=spec.url)
                    for s in DATASETS.values() if s.archive and s.name != spec.name)]


def read_mapping(path: Path, offset: int = 0) -> tuple[str, ...]:
    """EMNIST's `*-mapping.txt`: one `label code [code...]` line per class, labels from
    `offset` up, each code a Unicode code point; the class's name is its characters joined by
    '/' (letters: `A/a`)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_MAPPING_BYTES + 1)
    except OSError as e:
        raise DataError(f"{path}: cannot read the class mapping: {e.strerror or e}") from None
    if len(raw) > MAX_MAPPING_BYTES:
        raise DataError(f"{path}: class mapping too large: expected at most "
                        f"{MAX_MAPPING_BYTES} bytes")
    names: list[str] = []
    for number, line in enumerate(raw.decode("ascii", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        names.append(_mapping_line(f"{path}, line {number}", line, offset, len(names)))
    if not names or len(names) > MAX_CLASSES:
        raise DataError(f"{path}: expected 1 to {MAX_CLASSES} classes in the mapping, "
                        f"found {len(names)}")
    return tuple(names)


def _mapping_line(where: str, line: str, offset: int, index: int) -> str:
    fields = line.split()
    try:
        values = [int(v) for v in fields]
    except ValueError:
        values = []
    if len(values) < 2:
        raise DataError(f"{where}: expected `label code [code...]` (integers), "
                        f"found {line[:60]!r}")
    if values[0] != offset + index:
        raise DataError(f"{where}: expected label {offset + index} (one line per label, in "
                        f"order from {offset}), found {values[0]}")
    if not all(32 < c < 0x110000 and chr(c).isprintable() for c in values[1:]):
        raise DataError(f"{where}: character codes must be printable characters, "
                        f"found {values[1:]}")
    return "/".join(chr(c) for c in values[1:])
