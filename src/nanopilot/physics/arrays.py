"""Calibration arrays from files: detector masks, dark frames, flat fields (``.npy``, HDF5 / NeXus, images).

Pure numpy (h5py and Pillow are imported only for their file types), so every layer can read them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: File suffixes :func:`read_array` reads as HDF5 / NeXus, and as images.
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".nxs", ".nx5")
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".edf")


def read_array(text: str, name: str | None = None, *, what: str = "array") -> np.ndarray:
    """The array in file ``text``: a ``.npy`` file; an HDF5 / NeXus file (``FILE::/path/to/dataset``, else its
    first dataset called ``name``, e.g. ``pixel_mask``, else its only dataset); or an image (``.tif``, ``.png``).

    ``what`` names the array in error messages (e.g. "mask file")."""
    path, _, dataset = str(text).partition("::")
    suffix = Path(path).suffix.lower()
    if not Path(path).is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    if suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if suffix in HDF5_SUFFIXES:
        import h5py

        with h5py.File(path, "r") as file:
            found = dataset or _first_dataset(file, name)
            if found is None or found not in file:
                wanted = dataset or (f"named {name}" if name else "(it has several)")
                raise ValueError(f"{what} {path} has no dataset {wanted}: give FILE::/path/to/dataset")
            return file[found][()]
    if suffix in IMAGE_SUFFIXES:
        from PIL import Image

        with Image.open(path) as image:
            return np.asarray(image)
    raise ValueError(f"{what} {path}: unknown type {suffix!r}; use .npy, HDF5/NeXus ({', '.join(HDF5_SUFFIXES)}) "
                     f"or an image ({', '.join(IMAGE_SUFFIXES)})")


def _first_dataset(file, name: str | None) -> str | None:
    """The first dataset called ``name`` (any group), else the file's only dataset, else None."""
    datasets = []
    file.visititems(lambda key, node: datasets.append(key) if hasattr(node, "shape") else None)
    named = [key for key in datasets if name and key.split("/")[-1] == name]
    if named:
        return named[0]
    return datasets[0] if len(datasets) == 1 else None
