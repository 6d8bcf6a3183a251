"""How work runs on the hardware, whatever the model or method: the device, batches sized to
memory and halved when it runs out, progress, cancellation and the time budget
(:mod:`.context`), peak-memory measurement (:mod:`.memory`), window plans for tiling a volume
(:mod:`.windows`) and seeding (:mod:`.seeding`).

May import: :mod:`TorchEsegetaLib.errors` only. Methods say *what* to compute; this package
decides *how* to batch and tile it.
"""
