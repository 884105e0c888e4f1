"""ASE I/O plugin: ``ase.io.read("simulation.h5", ":")`` and ``ase gui simulation.h5``.

Registered through the ``ase.ioformats`` entry point in pyproject.toml. ASE
imports this module whenever ``ase.io`` is imported, so it must stay light:
h5py and the reader are imported only when a file is read.
"""

from __future__ import annotations

from ase.utils.plugins import ExternalIOFormat

# "+S": many images per file, and the reader wants a file name (h5py opens it).
ioformat = ExternalIOFormat(
    desc="ase-mlff MD trajectory (HDF5)",
    code="+S",
    module="ase_mlff.md.h5format",
    ext="h5",
)


def read_mlff_h5(filename, index=-1):
    """Frames of an ``mlff-md run`` HDF5 file (see :func:`ase_mlff.md.h5.read_frames`)."""
    from .h5 import read_frames

    if isinstance(index, str):
        from ase.io.formats import string2index

        index = string2index(index)
    yield from read_frames(filename, index)
