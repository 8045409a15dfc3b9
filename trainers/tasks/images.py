"""Handwritten digits: scikit-learn's bundled 8x8 set, or MNIST from local IDX files."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from ckptlab._checks import check_int
from ckptlab.errors import DataError, ValidationError

from ._base import TaskData, _split

_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzip-compressed or not.

    Layout: magic number ``0x00 0x00 <type> <ndim>``, then ndim big-endian uint32 sizes, then
    the data in C order, big-endian. Types: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64. Compression is recognised from the content (the gzip magic
    bytes ``1f 8b``), not from the file name.

    Parameters
    ----------
    path : str or os.PathLike
        The file.

    Returns
    -------
    numpy.ndarray
        A new, writable array in native byte order with the declared shape.

    Raises
    ------
    DataError
        If the file is missing or unreadable, is a broken gzip stream, has a bad magic number,
        an unknown type code, zero dimensions, or a size that differs from what its header
        declares (truncated or with trailing bytes). The message names the file.

    References
    ----------
    .. [1] Y. LeCun, C. Cortes, C. Burges, "The MNIST database of handwritten digits",
       http://yann.lecun.com/exdb/mnist/ (file format section).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"IDX file {path} does not exist") from None
    except OSError as exc:
        raise DataError(f"IDX file {path} cannot be read: {exc}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"IDX file {path} is a broken gzip stream: {exc}") from None
    if len(raw) < 4:
        raise DataError(
            f"IDX file {path} is too short for the 4-byte magic number ({len(raw)} bytes)"
        )
    if raw[0] != 0 or raw[1] != 0:
        raise DataError(
            f"IDX file {path} has a bad magic number 0x{raw[:4].hex()}: its first two bytes "
            f"must be 0x00 0x00"
        )
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in _IDX_DTYPES)
        raise DataError(f"IDX file {path} has unknown type code 0x{code:02X}; known: {known}")
    if ndim == 0:
        raise DataError(f"IDX file {path} declares 0 dimensions; it needs at least 1")
    start = 4 + 4 * ndim
    if len(raw) < start:
        raise DataError(
            f"IDX file {path} is truncated: its header declares {ndim} dimensions "
            f"({start} header bytes) but the file has {len(raw)} bytes"
        )
    shape = struct.unpack(f">{ndim}I", raw[4:start])
    dtype = np.dtype(_IDX_DTYPES[code])
    count = math.prod(shape)
    want, have = count * dtype.itemsize, len(raw) - start
    if have != want:
        what = "truncated" if have < want else "longer than declared"
        raise DataError(
            f"IDX file {path} is {what}: its header declares shape {shape} of {dtype.name} "
            f"({want} data bytes) but it holds {have} data bytes"
        )
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=start).reshape(shape)
    return data.astype(dtype.newbyteorder("="))  # copies: native order, writable


_MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def _read_mnist(data_dir: Path) -> dict[str, np.ndarray]:
    if not data_dir.is_dir():
        raise DataError(f"data_dir {data_dir} is not a directory")
    out = {}
    for key, stem in _MNIST_FILES.items():
        found = [f for f in (data_dir / stem, data_dir / f"{stem}.gz") if f.is_file()]
        if not found:
            raise DataError(f"data_dir {data_dir} has no file {stem} (or {stem}.gz)")
        arr = read_idx(found[0])
        is_images = key.startswith("x")
        if arr.dtype != np.uint8 or arr.ndim != (3 if is_images else 1):
            what = "3-D uint8 images" if is_images else "1-D uint8 labels"
            raise DataError(f"MNIST file {found[0]} must hold {what}, got {arr.dtype} {arr.shape}")
        if not is_images and arr.size and arr.max() > 9:
            raise DataError(
                f"MNIST file {found[0]} has label {arr.max()}; labels must be in [0, 9]"
            )
        out[key] = arr
    for split in ("train", "test"):
        if len(out[f"x_{split}"]) != len(out[f"y_{split}"]):
            raise DataError(
                f"MNIST {split} files in {data_dir} disagree: {len(out[f'x_{split}'])} images "
                f"but {len(out[f'y_{split}'])} labels"
            )
    if out["x_train"].shape[1:] != out["x_test"].shape[1:]:
        raise DataError(
            f"MNIST train and test images in {data_dir} differ in size: "
            f"{out['x_train'].shape[1:]} and {out['x_test'].shape[1:]}"
        )
    return out


def digits(*, n_train: int = 1000, seed: int = 0, data_dir=None) -> TaskData:
    """Handwritten digits: scikit-learn's bundled 8x8 set, or real MNIST from local files.

    Without ``data_dir``: the 1797 images of ``sklearn.datasets.load_digits`` (shipped with
    scikit-learn, no download), pixels scaled from [0, 16] to [0, 1], 64 inputs; ``n_train``
    images drawn at random for training, all the others for test.

    With ``data_dir``: MNIST read from the four IDX files ``train-images-idx3-ubyte``,
    ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (each
    may instead be ``.gz``; the uncompressed one wins when both exist), pixels divided by 255
    and flattened (784 inputs for 28x28); ``n_train`` images drawn at random from the training
    file, test set = the whole test file.

    Parameters
    ----------
    n_train : int, default 1000
        Number of training images, >= 1. Bundled digits: < 1797 (the rest is the test set).
        MNIST: at most the number of training images (the test set is a separate file).
    seed : int, default 0
        Seed of the draw.
    data_dir : str or os.PathLike or None, default None
        Directory holding the MNIST IDX files; None uses the bundled digits.

    Returns
    -------
    TaskData
        ``input_kind="continuous"``, float32 inputs in [0, 1], 10 classes.

    Raises
    ------
    ValidationError
        On a bad argument (including ``n_train`` too large for the data).
    DataError
        If a MNIST file is missing or malformed.

    References
    ----------
    .. [1] E. Alpaydin, C. Kaynak, "Optical recognition of handwritten digits", UCI Machine
       Learning Repository, 1998 (the scikit-learn digits).
    .. [2] Y. LeCun, L. Bottou, Y. Bengio, P. Haffner, "Gradient-based learning applied to
       document recognition", Proc. IEEE 86(11), 1998 (MNIST).
    .. [3] Z. Liu, E. Michaud, M. Tegmark, "Omnigrok: grokking beyond algorithmic data",
       arXiv:2210.01117, 2022 (1000 MNIST training images).
    """
    n_train = check_int("n_train", n_train, min=1)
    seed = check_int("seed", seed, min=0)
    rng = np.random.default_rng(seed)
    if data_dir is None:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        n_all = len(bunch.target)
        if n_train >= n_all:
            raise ValidationError(
                f"n_train must be < {n_all} (the bundled digits hold {n_all} images and the "
                f"rest form the test set), got {n_train}"
            )
        x = (bunch.data / 16.0).astype(np.float32)
        y = bunch.target.astype(np.int64)
        x_tr, y_tr, x_te, y_te = _split(x, y, n_train, seed)
        dir_param = None
    else:
        data_dir = Path(data_dir).resolve()
        mnist = _read_mnist(data_dir)
        n_all = len(mnist["y_train"])
        if n_train > n_all:
            raise ValidationError(
                f"n_train must be <= {n_all} (the training images in {data_dir}), got {n_train}"
            )
        pick = rng.permutation(n_all)[:n_train]

        def flat(images):
            return (images.reshape(len(images), -1) / np.float32(255)).astype(np.float32)

        x_tr, y_tr = flat(mnist["x_train"][pick]), mnist["y_train"][pick].astype(np.int64)
        x_te, y_te = flat(mnist["x_test"]), mnist["y_test"].astype(np.int64)
        dir_param = str(data_dir)
    return TaskData(
        "digits", x_tr, y_tr, x_te, y_te, n_classes=10, input_kind="continuous", vocab_size=None,
        params={"n_train": n_train, "seed": seed, "data_dir": dir_param},
    )
