"""Synthetic MRA-like volumes: bright branching vessel trees on a dark, noisy, biased background.

Everything is drawn from one ``np.random.default_rng(seed)``, so a seed fixes the volume
exactly; the demo model is trained on some seeds and shown others.
"""

from __future__ import annotations

from typing import cast

import numpy as np
from scipy import ndimage

ROOT_RADIUS = (2.2, 2.7)
TIP_RADIUS = 0.8
STEP = 1.0
RADIUS_DECAY_PER_STEP = 0.996
BRANCH_PROBABILITY = 0.05
MAX_SEGMENTS = 4000

TISSUE_LEVEL = 170.0
TISSUE_TEXTURE = 25.0
NOISE_SIGMA = 30.0


def make_vessel_volume(
    shape: tuple[int, int, int] = (64, 64, 64), seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one synthetic time-of-flight MRA-like volume and its vessel label.

    Args:
        shape: voxels along (i, j, k).
        seed: seed of the only random generator used; the same seed gives the same volume.

    Returns:
        (image, label): float32 intensities roughly in [0, 1000] and a uint8 mask, 1 = vessel.
    """
    shape = cast("tuple[int, int, int]", tuple(int(s) for s in shape))
    rng = np.random.default_rng(seed)
    segments = []
    for _ in range(rng.integers(4, 7)):
        segments += _grow_tree(rng, shape)
    coverage, radius = _rasterise(np.asarray(segments), shape)

    tissue = TISSUE_LEVEL + TISSUE_TEXTURE * _smooth_noise(rng, shape, sigma=3.0)
    # Time-of-flight contrast fades in small vessels (slower flow, partial volume).
    vessel_level = rng.uniform(520.0, 600.0) + 110.0 * np.minimum(radius, 2.5)
    image = tissue * (1.0 - coverage) + vessel_level * coverage
    image *= _bias_field(rng, shape)
    image = np.hypot(
        image + rng.normal(0.0, NOISE_SIGMA, shape), rng.normal(0.0, NOISE_SIGMA, shape)
    )
    image = np.clip(image, 0.0, 1000.0).astype(np.float32)
    label = (coverage >= 0.5).astype(np.uint8)
    return image, label


def _grow_tree(rng: np.random.Generator, shape: tuple[int, int, int]) -> list[np.ndarray]:
    """Centreline segments [x0, y0, z0, x1, y1, z1, r0, r1] of one tree entering from a face."""
    size = np.asarray(shape, dtype=np.float64)
    axis, side = rng.integers(3), rng.integers(2)
    start = rng.uniform(0.25, 0.75, 3) * size
    start[axis] = 0.0 if side == 0 else size[axis] - 1.0
    direction = rng.normal(0.0, 0.3, 3)
    direction[axis] = 1.0 if side == 0 else -1.0
    branches = [(start, direction / np.linalg.norm(direction), rng.uniform(*ROOT_RADIUS))]
    segments: list[np.ndarray] = []
    while branches and len(segments) < MAX_SEGMENTS:
        point, direction, radius = branches.pop()
        bend: np.ndarray = np.zeros(3)
        steps = 0
        while radius >= TIP_RADIUS and len(segments) < MAX_SEGMENTS:
            # Smooth curvature: the bending vector is itself a slow random walk.
            bend = 0.9 * bend + rng.normal(0.0, 0.015, 3)
            inward = size / 2.0 - point
            direction = direction + bend + 0.01 * inward / max(float(np.linalg.norm(inward)), 1.0)
            direction /= np.linalg.norm(direction)
            new_point = point + STEP * direction
            new_radius = radius * RADIUS_DECAY_PER_STEP
            segments.append(
                np.concatenate([point, new_point, [radius, max(new_radius, TIP_RADIUS)]])
            )
            point, radius = new_point, new_radius
            steps += 1
            if np.any(point < -radius) or np.any(point > size - 1.0 + radius):
                break
            if steps > 4 and radius > 1.1 and rng.random() < BRANCH_PROBABILITY:
                child_direction = _turn(rng, direction, np.deg2rad(rng.uniform(35.0, 75.0)))
                branches.append((point.copy(), child_direction, radius * rng.uniform(0.65, 0.85)))
                radius *= rng.uniform(0.85, 0.95)
                direction = _turn(rng, direction, np.deg2rad(rng.uniform(5.0, 20.0)))
                steps = 0
    return segments


def _turn(rng: np.random.Generator, direction: np.ndarray, angle: float) -> np.ndarray:
    """``direction`` rotated by ``angle`` towards a random perpendicular."""
    perpendicular = np.cross(direction, rng.normal(size=3))
    perpendicular /= np.linalg.norm(perpendicular)
    return np.cos(angle) * direction + np.sin(angle) * perpendicular


def _rasterise(segments: np.ndarray, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Partial-volume coverage in [0, 1] of the tapered capsules and the radius that covers each voxel.

    Coverage falls linearly from 1 to 0 between half a voxel inside and half a voxel outside the
    surface, so ``coverage >= 0.5`` is exactly "within the radius".
    """
    coverage = np.zeros(shape)
    radius_map = np.zeros(shape)
    upper = np.asarray(shape) - 1
    for x0, y0, z0, x1, y1, z1, r0, r1 in segments:
        a, b = np.array([x0, y0, z0]), np.array([x1, y1, z1])
        reach = max(r0, r1) + 0.5
        low = np.clip(np.floor(np.minimum(a, b) - reach), 0, upper).astype(int)
        high = np.clip(np.ceil(np.maximum(a, b) + reach), 0, upper).astype(int) + 1
        if np.any(high - low <= 0):
            continue
        box = tuple(slice(lo, hi) for lo, hi in zip(low, high))
        grid = np.stack(
            np.meshgrid(*(np.arange(lo, hi) for lo, hi in zip(low, high)), indexing="ij"), -1
        )
        ab = b - a
        t = np.clip(((grid - a) @ ab) / max(ab @ ab, 1e-12), 0.0, 1.0)
        distance = np.linalg.norm(grid - (a + t[..., None] * ab), axis=-1)
        local_radius = r0 + t * (r1 - r0)
        local = np.clip(local_radius + 0.5 - distance, 0.0, 1.0)
        better = local > coverage[box]
        coverage[box] = np.where(better, local, coverage[box])
        radius_map[box] = np.where(better, local_radius, radius_map[box])
    return coverage, radius_map


def _smooth_noise(
    rng: np.random.Generator, shape: tuple[int, int, int], sigma: float
) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to unit standard deviation."""
    field = ndimage.gaussian_filter(rng.normal(size=shape), sigma, mode="wrap")
    return field / max(field.std(), 1e-12)


def _bias_field(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """Smooth multiplicative inhomogeneity, roughly 0.75 to 1.3, from a few low-frequency cosines."""
    axes = np.meshgrid(*(np.linspace(0.0, 1.0, s) for s in shape), indexing="ij")
    log_field = np.zeros(shape)
    for _ in range(4):
        frequency = rng.uniform(0.2, 1.0, 3) * rng.choice([-1.0, 1.0], 3)
        phase = rng.uniform(0.0, 2.0 * np.pi)
        log_field += rng.uniform(0.03, 0.08) * np.cos(
            np.pi * sum(f * x for f, x in zip(frequency, axes)) + phase
        )
    return np.exp(log_field)
