"""Frames to an HDF5 file, announced like an area detector's file writer: stream_resource / stream_datum."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
from event_model import ComposeStreamResource, StreamRange

#: Where the frames live inside each file (the area-detector NeXus convention).
DATASET = "/entry/data/data"


class HDF5FrameWriter:
    """Appends (N, H, W) frames to one SWMR HDF5 file per staging and describes them with stream documents.

    Parameters
    ----------
    directory : str or Path
        Existing, writable directory for the files (for a Tiled catalogue: under its readable storage).
    data_key : str
        The descriptor data key the frames belong to.
    frame_shape : (int, int)
        Rows and columns of a frame.
    dtype : numpy dtype
        Pixel type.
    prefix : str
        File names are ``{prefix}_{random hex}.h5``.
    """

    def __init__(self, directory, data_key: str, frame_shape: tuple[int, int], dtype, prefix: str):
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"HDF5 directory {str(directory)!r} does not exist or is not a directory")
        if not os.access(directory, os.W_OK | os.X_OK):
            raise PermissionError(f"HDF5 directory {str(directory)!r} is not writable")
        self.path = directory.resolve() / f"{prefix}_{uuid.uuid4().hex[:12]}.h5"
        self.uri = self.path.as_uri().replace("file:///", "file://localhost/")  # as area detectors announce files
        self.data_key = data_key
        try:
            self._file = h5py.File(self.path, "w", libver="latest")
        except OSError as error:
            raise PermissionError(f"HDF5 directory {str(directory)!r} is not writable: {error}") from None
        self._dataset = self._file.create_dataset(DATASET, shape=(0, *frame_shape), maxshape=(None, *frame_shape),
                                                  chunks=(1, *frame_shape), dtype=dtype)
        self._file.swmr_mode = True
        self._bundle = ComposeStreamResource()(
            mimetype="application/x-hdf5", uri=self.uri,
            data_key=data_key, parameters={"dataset": DATASET, "chunk_shape": [1, *frame_shape]})
        self._announced_resource = False
        self._announced = 0

    @property
    def index(self) -> int:
        """Number of frames written."""
        return self._dataset.shape[0]

    def append(self, frames: np.ndarray) -> None:
        """Write (N, H, W) frames at the end of the dataset and flush them for readers."""
        start = self.index
        self._dataset.resize(start + len(frames), axis=0)
        self._dataset[start:] = frames
        self._dataset.flush()

    def collect_asset_docs(self, index: int | None = None) -> Iterator[tuple[str, dict]]:
        """The stream_resource (once), then one stream_datum for the frames written since the last call."""
        stop = self.index if index is None else min(int(index), self.index)
        if stop <= self._announced:
            return
        if not self._announced_resource:
            self._announced_resource = True
            yield "stream_resource", self._bundle.stream_resource_doc
        yield "stream_datum", self._bundle.compose_stream_datum(indices=StreamRange(start=self._announced, stop=stop))
        self._announced = stop

    def close(self) -> None:
        self._file.close()


class WriterStaging:
    """Mixin for an ophyd device that writes frames to an :class:`HDF5FrameWriter` while staged: ``stage()`` opens
    the writer :meth:`_open_writer` gives (None: inline mode, no file), and ``unstage()`` or a failed ``stage()``
    closes it. Put it before the ophyd base class."""

    _writer: HDF5FrameWriter | None = None

    def _open_writer(self) -> HDF5FrameWriter | None:
        raise NotImplementedError

    def stage(self):
        self._writer = self._open_writer()
        try:
            return super().stage()
        except Exception:
            self._close_writer()
            raise

    def unstage(self):
        try:
            return super().unstage()
        finally:
            self._close_writer()

    def _close_writer(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
