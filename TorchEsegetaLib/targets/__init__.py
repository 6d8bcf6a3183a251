"""What to explain: a target as the user asks for it (:mod:`.spec`: class, mask, ROI box or
voxel, validated against the job schema), and bound to the model's unperturbed prediction as one
differentiable score per example (:mod:`.bound`), on the model's grid or the input's; the
predictive entropy of an uncertainty kind's members over a region (:mod:`.uncertainty`).

May import: :mod:`TorchEsegetaLib.models` and what it may import.
"""
