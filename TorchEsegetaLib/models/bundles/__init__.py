"""MONAI bundle folders: loading one (:mod:`.folder`), its configs read into a model card
(:mod:`.config`), the lambdas of its transforms read from their syntax tree (:mod:`.lambdas`),
and MONAI's own run of a bundle, the reference our segmentation is held against
(:mod:`.reference`).
"""
