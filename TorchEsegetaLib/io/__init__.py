"""Volumes and files: :class:`~.volume.Volume` (an array with its exact geometry, LPS),
reading and writing NIfTI, NRRD, MHA and DICOM series with SimpleITK (:mod:`.images`, the only
place that knows axis order), checks that a file is whole (:mod:`.completeness`), files
written whole or not at all (:mod:`.atomic`), and where paths lie once links are resolved (a
name inside a folder, an output folder against the inputs, a FIFO or device: :mod:`.paths`).

May import: :mod:`TorchEsegetaLib.errors` only. Knows nothing of models or runs.
"""
