"""What a ``.npy`` file holds, from its header alone: shape, dtype and whether the data is all there.

The start-up scan (``scan.py``) reads thousands of these, so nothing but the header is read: the
magic string, the header dict and one ``fstat`` for the size (no memory map, no data). A file
shorter than its header promises is reported as truncated; ``np.load`` would refuse it too.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

_FORMAT = np.lib.format


class NpyHeader(NamedTuple):
    shape: tuple[int, ...]
    dtype: np.dtype
    data_offset: int  # bytes before the array data
    file_size: int

    @property
    def data_bytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def truncated(self) -> bool:
        return self.file_size < self.data_offset + self.data_bytes


def read_npy_header(path: str | os.PathLike) -> NpyHeader:
    """The header of the ``.npy`` file at ``path``. Raises FileNotFoundError for a missing file,
    ValueError (or another OSError) for one whose header does not read."""
    with open(Path(path), "rb") as f:
        try:
            version = _FORMAT.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = _FORMAT.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = _FORMAT.read_array_header_2_0(f)
            else:  # 3.0 is written only for utf-8 field names: a structured array
                raise ValueError(f".npy format {version}: a structured array, not a numeric one")
        except EOFError as e:  # read_magic on a file of a few bytes
            raise ValueError(str(e)) from e
        return NpyHeader(tuple(shape), np.dtype(dtype), f.tell(), os.fstat(f.fileno()).st_size)
