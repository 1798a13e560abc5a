"""Read .npz files as data only, checked against the keys, dtypes and shapes privfl wrote them with.

Run directories and caches are shared, so nothing read back from them may run code: arrays are
loaded with allow_pickle=False (an object array is refused, never unpickled), and every array
must match a spec such as ``{"deltas": ("float16", ("k", "P"))}``. A letter in a shape is a size
that must agree wherever it appears (and with `sizes`, when given); a number is an exact size.
`headers` checks a file from its array headers alone, without reading (or decompressing) the data.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from privfl.errors import PrivflError

Spec = dict[str, tuple[str, tuple[int | str, ...]]]
"""key -> (dtype name, or "str" for a unicode array; shape with sizes or letters)."""

_UNREADABLE = (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError)


def read_npz(
    path: Path, spec: Spec, error: type[PrivflError], fix: str, sizes: dict[str, int] | None = None
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """(arrays, sizes of the spec's letters) of the .npz at `path`; `error` naming the file and `fix` if
    it is not readable without pickle or does not match `spec`."""
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise ValueError("it holds a single array, not an .npz archive")
        with z:
            arrays = {k: z[k] for k in z.files}
    except _UNREADABLE as exc:
        raise error(f"{path} is not a file privfl wrote: {exc}; {fix}") from None
    found = {k: (a.dtype, a.shape) for k, a in arrays.items()}
    return arrays, check_spec(path, found, spec, error, fix, sizes)


def headers(
    path: Path, spec: Spec, error: type[PrivflError], fix: str, sizes: dict[str, int] | None = None
) -> dict[str, int]:
    """Check the .npz at `path` against `spec` from its array headers only; returns the letters' sizes."""
    found: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for name in zf.namelist():
                if not name.endswith(".npy"):
                    raise ValueError(f"member {name!r} is not an .npy array")
                with zf.open(name) as f:
                    version = np.lib.format.read_magic(f)
                    read = {
                        (1, 0): np.lib.format.read_array_header_1_0,
                        (2, 0): np.lib.format.read_array_header_2_0,
                    }.get(version)
                    if read is None:
                        raise ValueError(f"member {name!r} has .npy format {version}")
                    shape, _fortran, dtype = read(f)
                found[name[: -len(".npy")]] = (dtype, shape)
    except _UNREADABLE as exc:
        raise error(f"{path} is not a file privfl wrote: {exc}; {fix}") from None
    return check_spec(path, found, spec, error, fix, sizes)


def check_spec(
    path: Path,
    found: dict[str, tuple[np.dtype, tuple[int, ...]]],
    spec: Spec,
    error: type[PrivflError],
    fix: str,
    sizes: dict[str, int] | None = None,
) -> dict[str, int]:
    """The sizes bound to the spec's letters; `error` naming the first key, dtype or shape that differs."""
    if set(found) != set(spec):
        raise error(
            f"{path} is not a file privfl wrote: it holds arrays {sorted(found)}, expected "
            f"{sorted(spec)}; {fix}"
        )
    bound = dict(sizes or {})
    for key, (want_dtype, want_shape) in spec.items():
        dtype, shape = found[key]
        ok = dtype.kind == "U" if want_dtype == "str" else dtype == np.dtype(want_dtype)
        if not ok:
            raise error(f"{path}: array {key!r} has dtype {dtype}, expected {want_dtype}; {fix}")
        if len(shape) != len(want_shape):
            raise error(f"{path}: array {key!r} has shape {shape}, expected {want_shape}; {fix}")
        for got, want in zip(shape, want_shape, strict=True):
            if isinstance(want, str):
                want = bound.setdefault(want, got)
            if got != want:
                raise error(
                    f"{path}: array {key!r} has shape {shape}, expected {_show(want_shape, bound)}; {fix}"
                )
    return bound


def _show(shape: tuple[int | str, ...], bound: dict[str, int]) -> tuple:
    return tuple(bound.get(s, s) if isinstance(s, str) else s for s in shape)
