"""What to explain: a target as the user asks for it (:mod:`.spec`: class, mask, ROI box, voxel,
or an object of the segmentation, validated against the job schema), and bound to the model's
unperturbed prediction as one differentiable score per example (:mod:`.bound`), on the model's
grid or the input's. :mod:`.objects` makes the object targets' regions (a connected component,
a boundary band) from the segmentation; :mod:`.uncertainty` scores the predictive entropy of an
uncertainty kind's members over a region.

May import: :mod:`TorchEsegetaLib.models` and what it may import.
"""
