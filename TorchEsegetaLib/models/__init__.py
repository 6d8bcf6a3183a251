"""Model sources and running them: the model card (channels, spacing, preprocessing, windows),
loading a model from every source (:mod:`.loading`: the built-in demo in :mod:`.demo`, a MONAI
network and checkpoint, TorchScript, a MONAI bundle in :mod:`.bundles`, an nnU-Net v2 folder in
:mod:`.nnunet`), the preprocessing pipeline between the input grid and the model's
(:mod:`.pipeline`, :mod:`.grids`, :mod:`.intensity`), and segmentation through it
(:mod:`.inference`, window by window in :mod:`.window_passes`; :mod:`.postprocessing`); the
members of a prediction that say how sure the model is (:mod:`.uncertainty`).

May import: :mod:`TorchEsegetaLib.io`, :mod:`TorchEsegetaLib.engine`,
:mod:`TorchEsegetaLib.schema`, :mod:`TorchEsegetaLib.errors`. Nothing here knows about
attribution methods, targets or runs.
"""
