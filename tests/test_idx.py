"""IDX reader and writer: valid files round-trip, any damage is a DataError naming the file."""

from __future__ import annotations

import gzip
import itertools
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainer.data.idx import read_idx, read_images, read_labels, write_idx
from trainer.errors import DataError


def raw_idx(magic: int, dims: tuple[int, ...], body: bytes) -> bytes:
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + body


def put(path: Path, data: bytes, gz: bool = False) -> Path:
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.fixture(params=[False, True], ids=["plain", "gz"])
def gz(request: pytest.FixtureRequest) -> bool:
    return request.param


def test_round_trip(tmp_path: Path, gz: bool) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 5, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 7, dtype=np.uint8)
    suffix = ".gz" if gz else ""
    write_idx(tmp_path / f"i{suffix}", images)
    write_idx(tmp_path / f"l{suffix}", labels)
    assert np.array_equal(read_images(tmp_path / f"i{suffix}"), images)
    assert np.array_equal(read_labels(tmp_path / f"l{suffix}", num_classes=10), labels)
    assert read_images(tmp_path / f"i{suffix}").flags.writeable
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"i{suffix}", f"l{suffix}"]  # no temps


def test_gzip_is_detected_by_content_not_name(tmp_path: Path) -> None:
    data = raw_idx(2049, (3,), b"\x01\x02\x03")
    assert read_idx(put(tmp_path / "labels", data, gz=True)).tolist() == [1, 2, 3]
    assert read_idx(put(tmp_path / "labels.gz", data)).tolist() == [1, 2, 3]


def test_exact_bytes_of_the_format(tmp_path: Path) -> None:
    write_idx(tmp_path / "l", np.array([7, 2], dtype=np.uint8))
    assert (tmp_path / "l").read_bytes() == bytes.fromhex("00000801 00000002 0702")


def test_gz_output_is_deterministic(tmp_path: Path, monkeypatch) -> None:
    a = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
    ticks = itertools.count(1_000_000_000, 1000)  # gzip's clock moves on between the writes
    monkeypatch.setattr(gzip, "time", SimpleNamespace(time=lambda: next(ticks)))
    write_idx(tmp_path / "a.gz", a)
    write_idx(tmp_path / "b.gz", a)
    data = (tmp_path / "a.gz").read_bytes()
    assert data == (tmp_path / "b.gz").read_bytes()
    assert data[:4] == b"\x1f\x8b\x08\x00"  # gzip, deflate, no flags: no file name stored
    assert data[4:8] == b"\x00\x00\x00\x00"  # the header's mtime


@pytest.mark.parametrize(
    "array", [np.zeros((2, 2), np.uint8), np.zeros(3, np.float32), np.zeros(3, np.int64)]
)
def test_write_refuses_what_idx_cannot_hold(tmp_path: Path, array: np.ndarray) -> None:
    with pytest.raises(DataError, match="uint8"):
        write_idx(tmp_path / "x", array)
    assert not list(tmp_path.iterdir())


def test_interrupted_write_keeps_the_old_file(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "labels.gz"
    write_idx(target, np.array([1, 2, 3], np.uint8))
    before = target.read_bytes()

    def explode(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(gzip.GzipFile, "write", explode)
    with pytest.raises(KeyboardInterrupt):
        write_idx(target, np.array([4, 5], np.uint8))
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["labels.gz"]


IMG = raw_idx(2051, (2, 2, 3), bytes(12))
CORRUPT = {
    "bad magic": raw_idx(2050, (2, 2, 3), bytes(12)),
    "float type byte": raw_idx(0x0D03, (2, 2, 3), bytes(48)),
    "labels magic for images": raw_idx(2049, (12,), bytes(12)),
    "wrong dims": raw_idx(0x0802, (4, 3), bytes(12)),
    "truncated": IMG[:-1],
    "trailing bytes": IMG + b"\x00",
    "truncated header": IMG[:9],
    "empty": b"",
    "zero rows": raw_idx(2051, (2, 0, 3), b""),
    "absurd header": raw_idx(2051, (0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), bytes(12)),
}


@pytest.mark.parametrize("kind", CORRUPT)
def test_corrupt_images_name_the_file(tmp_path: Path, gz: bool, kind: str) -> None:
    path = put(tmp_path / "train-images-idx3-ubyte", CORRUPT[kind], gz)
    with pytest.raises(DataError) as err:
        read_images(path)
    message = str(err.value)
    assert str(path) in message
    assert "expected" in message and "found" in message


def test_corrupt_gzip_stream(tmp_path: Path) -> None:
    blob = bytearray(gzip.compress(IMG))
    blob[-6] ^= 0xFF  # damage the CRC-32 in the trailer
    damaged = {"crc": bytes(blob), "cut": bytes(blob[:-10]), "junk": gzip.compress(IMG) + b"xy"}
    for name, data in damaged.items():
        path = put(tmp_path / name, data)
        with pytest.raises(DataError, match=name):
            read_images(path)


def test_label_out_of_range_names_the_file(tmp_path: Path) -> None:
    path = put(tmp_path / "train-labels-idx1-ubyte", raw_idx(2049, (4,), bytes([1, 9, 10, 3])))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte: label 2 is 10: expected"):
        read_labels(path, num_classes=10)
    assert read_labels(path, num_classes=11).tolist() == [1, 9, 10, 3]


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nothing-here"):
        read_idx(tmp_path / "nothing-here")
    with pytest.raises(DataError, match=str(tmp_path)):
        read_idx(tmp_path)


def _any_outcome(path: Path) -> None:
    try:
        array = read_idx(path)
    except DataError as e:
        assert str(path) in str(e)
    else:
        assert array.dtype == np.uint8 and array.ndim in (1, 3)


def _headed(draw_magic: int, dims: list[int], body: bytes) -> bytes:
    return raw_idx(draw_magic, tuple(dims), body)


idx_like = st.one_of(
    st.binary(max_size=64),
    st.builds(
        _headed,
        st.sampled_from([2049, 2051, 0x0803, 0x0801, 0x0800]),
        st.lists(st.integers(0, 2**32 - 1) | st.integers(0, 6), min_size=0, max_size=3),
        st.binary(max_size=64),
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=idx_like, gz=st.booleans(), cut=st.integers(0, 40))
def test_random_bytes_raise_only_data_error(tmp_path_factory, data: bytes, gz: bool, cut: int):
    blob = gzip.compress(data) if gz else data
    if gz and cut:  # also damaged gzip streams, not only well-formed ones
        blob = blob[:-cut]
    path = tmp_path_factory.mktemp("fuzz") / "train-images-idx3-ubyte"
    _any_outcome(put(path, blob))


def test_a_gz_read_stops_at_what_the_header_promises(tmp_path: Path) -> None:
    """A header promising two 2x3 images over 128 MB of zeros (a few hundred KB gzipped): the
    reader decompresses one byte past the promise and stops, never the whole stream."""
    import tracemalloc

    path = tmp_path / "bomb-images-idx3-ubyte.gz"
    with gzip.GzipFile(path, "wb", compresslevel=1) as gz:
        gz.write(raw_idx(2051, (2, 2, 3), bytes(12)))
        zeros = bytes(1 << 20)
        for _ in range(128):
            gz.write(zeros)
    assert path.stat().st_size < 2 << 20
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="expected"):
            read_images(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"{peak / 2**20:.0f} MB held while refusing the file"
