"""What the spread of the members says, voxel by voxel, in nats (natural logarithms).

For members m = 1..M with class probabilities p_m (K classes per voxel):

* predictive entropy H[p̄] of the mean p̄ = (1/M) sum_m p_m: all the uncertainty;
* expected entropy (1/M) sum_m H[p_m]: what each member is unsure about (the aleatoric part);
* mutual information H[p̄] - (1/M) sum_m H[p_m] >= 0: how much the members disagree (the
  epistemic part, BALD's score);
* the standard deviation over members of one class's probability (population, 1/M).

Mutually exclusive classes (softmax) use the categorical entropy -sum_k p_k ln p_k; independent
labels (sigmoid) the sum of each label's binary entropy.

:class:`MemberStatistics` takes the members one at a time, so memory holds a few volumes, not
M predictions. It keeps running means (Welford's update ``mean += (x - mean) / n``): identical
members leave the mean exactly at their value, so identical members give exactly zero mutual
information and standard deviation. :func:`predictive_entropy` is the same entropy as a
differentiable function of the members' logits, stable where probabilities underflow.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def entropy(probabilities: np.ndarray, exclusive: bool) -> np.ndarray:
    """(K, *S) probabilities -> (*S) entropy in nats (0 log 0 = 0)."""
    p = np.asarray(probabilities, dtype=np.float32)
    if exclusive:
        return -_xlogx(p).sum(axis=0)
    return -(_xlogx(p) + _xlogx(1.0 - p)).sum(axis=0)


def _xlogx(p: np.ndarray) -> np.ndarray:
    positive = p > 0
    return np.where(positive, p * np.log(np.where(positive, p, 1.0)), 0.0).astype(np.float32)


def member_labels(probabilities: np.ndarray, class_index: int, exclusive: bool) -> np.ndarray:
    """(*S) bool: where one member's prediction is ``class_index`` (argmax for mutually
    exclusive classes, probability > 0.5 for independent labels)."""
    if exclusive:
        return np.argmax(probabilities, axis=0) == class_index
    return probabilities[class_index] > 0.5


class MemberStatistics:
    """Voxelwise statistics over members added one at a time.

    Args:
        exclusive: mutually exclusive classes (categorical entropy) or independent labels.
        class_index: the class whose probability's spread, labels and volume are followed.
    """

    def __init__(self, exclusive: bool, class_index: int) -> None:
        self.exclusive = exclusive
        self.class_index = class_index
        self.count = 0
        self.names: list[str] = []
        self._mean: np.ndarray | None = None  # (K, *S) running mean of the probabilities
        self._mean_entropy: np.ndarray | None = None
        self._spread: np.ndarray | None = None  # Welford's sum of squares of the class's p
        self._mean_class: np.ndarray | None = None
        self._labelled: np.ndarray | None = None  # members labelling each voxel as the class
        #: voxels each member labels as the class, in member order
        self.class_voxels: list[int] = []

    def add(self, probabilities: np.ndarray, name: str = "") -> None:
        """One member's (K, *S) probabilities on the input grid."""
        p = np.asarray(probabilities, dtype=np.float32)
        self.count += 1
        self.names.append(name or f"member {self.count}")
        n = np.float32(self.count)
        member_entropy = entropy(p, self.exclusive)
        value = p[self.class_index]
        labels = member_labels(p, self.class_index, self.exclusive)
        if self._mean is None:
            self._mean, self._mean_entropy = p.copy(), member_entropy
            self._mean_class = value.copy()
            self._spread = np.zeros_like(value)
            self._labelled = labels.astype(np.uint16)
        else:
            assert self._mean_entropy is not None and self._mean_class is not None
            assert self._spread is not None and self._labelled is not None
            if p.shape != self._mean.shape:
                raise ValueError(f"member of shape {p.shape}, others {self._mean.shape}")
            self._mean += (p - self._mean) / n
            self._mean_entropy += (member_entropy - self._mean_entropy) / n
            before = value - self._mean_class
            self._mean_class += before / n
            self._spread += before * (value - self._mean_class)
            self._labelled += labels
        self.class_voxels.append(int(labels.sum()))

    def _require(self) -> None:
        if self.count < 2:
            raise ValueError(f"uncertainty needs at least two members, got {self.count}")

    @property
    def mean(self) -> np.ndarray:
        """(K, *S) mean probabilities of the members."""
        self._require()
        assert self._mean is not None
        return self._mean

    def entropy(self) -> np.ndarray:
        """(*S) predictive entropy of the mean prediction, nats."""
        return entropy(self.mean, self.exclusive)

    def mutual_information(self) -> np.ndarray:
        """(*S) predictive entropy minus the members' mean entropy (>= 0), nats."""
        assert self._mean_entropy is not None
        return np.maximum(self.entropy() - self._mean_entropy, 0.0).astype(np.float32)

    def std(self) -> np.ndarray:
        """(*S) standard deviation over members of the class's probability."""
        self._require()
        assert self._spread is not None
        return np.sqrt(np.maximum(self._spread / np.float32(self.count), 0.0)).astype(np.float32)

    def maps(self) -> dict[str, np.ndarray]:
        """Each quantity of :data:`~TorchEsegetaLib.models.uncertainty.QUANTITIES`."""
        return {
            "entropy": self.entropy().astype(np.float32),
            "mutual_information": self.mutual_information(),
            "std": self.std(),
        }

    def class_flip_share(self) -> float:
        """Of the voxels some member labels as the class, the share that not every member
        labels so (1 - the Jaccard index of all members' masks of the class); 0 when no
        member predicts the class."""
        self._require()
        assert self._labelled is not None
        anyone = int((self._labelled > 0).sum())
        if not anyone:
            return 0.0
        return int(((self._labelled > 0) & (self._labelled < self.count)).sum()) / anyone


def predictive_entropy(logits: torch.Tensor, activation: str, exclusive: bool) -> torch.Tensor:
    """(B, M, K, *S) member logits -> (B, *S) predictive entropy of their mean prediction, nats.

    Computed from log-probabilities (``log p̄ = logsumexp_m log p_m - log M``), so gradients stay
    finite where probabilities underflow to zero. ``activation`` "none": the outputs are
    probabilities already.
    """
    import torch

    members = logits.shape[1]
    if activation == "none":
        tiny = torch.finfo(logits.dtype).tiny
        log_p = torch.log(logits.clamp_min(tiny))
        log_q = torch.log((1 - logits).clamp_min(tiny))
    elif exclusive:
        log_p, log_q = torch.log_softmax(logits, dim=2), None
    else:
        log_p = torch.nn.functional.logsigmoid(logits)
        log_q = torch.nn.functional.logsigmoid(-logits)
    log_mean = torch.logsumexp(log_p, dim=1) - math.log(members)
    value = -(log_mean.exp() * log_mean).sum(dim=1)
    if not exclusive:
        assert log_q is not None
        log_mean_q = torch.logsumexp(log_q, dim=1) - math.log(members)
        value = value - (log_mean_q.exp() * log_mean_q).sum(dim=1)
    return value
