"""Pictures of results: display ranges and colour maps shared with the Slicer module and the
viewer (:mod:`.display`), the overview figures of a run (MIPs and slices through the target, one
row per method; :mod:`.overview` drawing with :mod:`.panels`), the uncertainty figure
(:mod:`.uncertainty`) and the evaluation figures (:mod:`.metric_figures`).

May import: :mod:`TorchEsegetaLib.metrics` and what it may import. Drawing only: which files a
run folder holds is decided in :mod:`TorchEsegetaLib.runs`.
"""
