"""The user's own data from an .npz file, validated."""

from __future__ import annotations

import hashlib
import io
import re
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ckptlab._checks import check_float, check_int
from ckptlab.errors import DataError, ValidationError

from ._base import TaskData, _check_split, _split


def _npz_array(npz, key: str, path: Path) -> np.ndarray:
    try:
        arr = npz[key]
    except ValueError as exc:  # object arrays need pickle, which is never allowed
        raise DataError(
            f"npz file {path}: key {key!r} cannot be loaded without pickle: {exc}"
        ) from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"npz file {path}: key {key!r} is unreadable: {exc}") from None
    if not isinstance(arr, np.ndarray):  # a zip member that is not a .npy file
        raise DataError(f"npz file {path}: key {key!r} is not a numpy array")
    return arr


def _check_xy(path: Path, xk: str, yk: str, x: np.ndarray, y: np.ndarray) -> None:
    where = f"npz file {path}:"
    if x.dtype.kind not in "iuf":
        raise DataError(f"{where} {xk!r} must be numeric (integer or float), got {x.dtype}")
    if x.ndim < 1 or len(x) < 1:
        raise DataError(f"{where} {xk!r} must hold at least one example, got shape {x.shape}")
    if y.dtype.kind not in "iu" or y.ndim != 1:
        raise DataError(
            f"{where} {yk!r} must be a 1-D array of integer labels, got {y.dtype} {y.shape}"
        )
    if len(y) != len(x):
        raise DataError(
            f"{where} {xk!r} has {len(x)} examples but {yk!r} has {len(y)} labels; "
            "they must match"
        )
    if y.min() < 0:
        raise DataError(f"{where} {yk!r} labels must be >= 0, got {y.min()}")


def from_npz(
    path, *, train_fraction: float = 0.8, seed: int = 0, sha256: str | None = None
) -> TaskData:
    """A task from the user's own arrays in an ``.npz`` file.

    Keys: ``x`` and ``y`` (labels, 1-D integers >= 0), optionally ``x_test`` and ``y_test``
    (both or neither); other keys are ignored. The file is always loaded with
    ``allow_pickle=False``. Integer ``x`` of shape (N, 2) is a token pair (``"tokens"``,
    vocab_size = largest id + 1); any other ``x`` is ``"continuous"``: cast to float32 with
    trailing dimensions flattened. n_classes = largest label + 1.

    Without a test set the examples are split as in the other tasks; with ``x_test``/``y_test``
    all of ``x`` is the training set, in file order, and ``train_fraction`` and ``seed`` are
    unused (still validated and recorded).

    Parameters
    ----------
    path : str or os.PathLike
        The ``.npz`` file.
    train_fraction : float, default 0.8
        Fraction used for training when the file has no test set, strictly inside (0, 1) and
        leaving at least one training and one test example.
    seed : int, default 0
        Seed of the split.
    sha256 : str or None, default None
        Expected SHA-256 (hex) of the file. The task's params always record the file's digest,
        so rebuilding from recorded params fails loudly if the file changed.

    Returns
    -------
    TaskData
        ``params`` = {"path" (absolute), "train_fraction", "seed", "sha256"}.

    Raises
    ------
    ValidationError
        On a bad argument.
    DataError
        If the file is missing, not an npz archive, lacks ``x`` or ``y``, or breaks a rule:
        lengths differ, labels not integers >= 0, ``x`` not numeric or not finite (after the
        float32 cast), only one of ``x_test``/``y_test``, ``x_test`` of another trailing shape
        or kind than ``x``, negative token ids, or a digest other than ``sha256``.
    """
    tf = check_float(
        "train_fraction", train_fraction, min=0, max=1, min_inclusive=False, max_inclusive=False
    )
    seed = check_int("seed", seed, min=0)
    if sha256 is not None and not (
        isinstance(sha256, str) and re.fullmatch(r"[0-9a-f]{64}", sha256)
    ):
        raise ValidationError(f"sha256 must be None or 64 lowercase hex digits, got {sha256!r}")
    path = Path(path).resolve()
    if not path.is_file():
        raise DataError(f"npz file {path} does not exist")
    raw = path.read_bytes()  # hash exactly the bytes that are loaded
    digest = hashlib.sha256(raw).hexdigest()
    if sha256 is not None and digest != sha256:
        raise DataError(
            f"npz file {path} has SHA-256 {digest}, expected {sha256}: the file changed"
        )
    try:
        npz = np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"npz file {path} is not a readable .npz archive: {exc}") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DataError(
            f"npz file {path} holds a single .npy array, not an .npz archive with keys "
            "'x' and 'y'"
        )
    with npz:
        keys = set(npz.files)
        for key in ("x", "y"):
            if key not in keys:
                raise DataError(f"npz file {path} has no key {key!r} (keys: {sorted(keys)})")
        if ("x_test" in keys) != ("y_test" in keys):
            have, lack = ("x_test", "y_test") if "x_test" in keys else ("y_test", "x_test")
            raise DataError(
                f"npz file {path} has {have!r} but no {lack!r}: give both or neither"
            )
        arrays = {k: _npz_array(npz, k, path) for k in ("x", "y", "x_test", "y_test") if k in keys}

    x, y = arrays["x"], arrays["y"]
    _check_xy(path, "x", "y", x, y)
    has_test = "x_test" in arrays
    if has_test:
        xt, yt = arrays["x_test"], arrays["y_test"]
        _check_xy(path, "x_test", "y_test", xt, yt)
        if xt.shape[1:] != x.shape[1:]:
            raise DataError(
                f"npz file {path}: 'x_test' examples have shape {xt.shape[1:]} but 'x' "
                f"examples have {x.shape[1:]}; they must match"
            )
        if (xt.dtype.kind == "f") != (x.dtype.kind == "f"):
            raise DataError(
                f"npz file {path}: 'x_test' is {xt.dtype} but 'x' is {x.dtype}; they must be "
                "both integer or both float"
            )
        xs, ys = {"x": x, "x_test": xt}, {"y": y, "y_test": yt}
    else:
        _, n_train = _check_split(tf, len(x))
        xs, ys = {"x": x}, {"y": y}

    tokens = x.dtype.kind in "iu" and x.ndim == 2 and x.shape[1] == 2
    if tokens:
        for k, v in xs.items():
            if v.min() < 0:
                raise DataError(
                    f"npz file {path}: {k!r} holds token ids, which must be >= 0, got {v.min()}"
                )
        xs = {k: v.astype(np.int64) for k, v in xs.items()}
        vocab = int(max(v.max() for v in xs.values())) + 1
    else:
        with np.errstate(over="ignore"):  # overflow to inf is reported just below
            xs = {k: v.reshape(len(v), -1).astype(np.float32) for k, v in xs.items()}
        for k, v in xs.items():
            # checked after the cast: float64 values beyond float32's range become inf
            if not np.isfinite(v).all():
                raise DataError(
                    f"npz file {path}: {k!r} must be finite, but holds NaN or Inf "
                    "(after the cast to float32)"
                )
        vocab = None
    n_classes = int(max(v.max() for v in ys.values())) + 1
    ys = {k: v.astype(np.int64) for k, v in ys.items()}
    if has_test:
        parts = (xs["x"], ys["y"], xs["x_test"], ys["y_test"])
    else:
        parts = _split(xs["x"], ys["y"], n_train, seed)
    return TaskData(
        "npz", *parts, n_classes=n_classes, input_kind="tokens" if tokens else "continuous",
        vocab_size=vocab,
        params={"path": str(path), "train_fraction": tf, "seed": seed, "sha256": digest},
    )
