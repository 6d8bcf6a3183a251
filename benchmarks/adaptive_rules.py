"""Refinement rules of adaptive occlusion, compared on the full occlusion maps of the bench's cases.

    python benchmarks/adaptive_rules.py --cache DIR [--networks demo,unet]
    python benchmarks/adaptive_rules.py --cache DIR --gradient   # the gradient first pass's settings

Every box adaptive occlusion evaluates at a level is a box of plain occlusion at that level's
window (128^3, stride = window, the grids nest), so a rule can be replayed on plain occlusion's
maps at windows 64, 32, 16 and 8 without running the network again. The maps are computed once
into the cache (``adaptive_occlusion.exhaustive``: 4,096 + 512 + 64 + 8 passes per network; the
window-8 map is the one ``bench.py --config adaptive`` keeps). Printed per network and rule:
passes, their ratio to exhaustive occlusion at window 8, the top-1% overlap and Spearman inside the
foreground (as ``bench.py`` measures them); then how concentrated the final drops are, how
additive (a box's drop against its eight children's), and plain occlusion at coarser windows.

``--gradient`` instead runs the gradient first pass (the method's default) with the settings of
``GRADIENT_RULES`` against the window-8 map: its passes, with their backward counted in forward
passes at the costs measured in the same run, the top-1% overlap and Spearman.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from adaptive_occlusion import (  # noqa: E402
    NETWORKS,
    exhaustive,
    make_cases,
    pass_costs,
    run_method,
    spearman,
    top_overlap,
)

from TorchEsegetaLib.methods.drill_down import refined_boxes  # noqa: E402

SIZE, FINAL = 128, 8
#: (levels, refine_share, max_refined); the first is the method's default
RULES = [
    (3, 0.95, 0.2),
    (3, 0.5, 0.25),
    (3, 0.9, 0.25),
    (3, 0.99, 0.15),
    (4, 0.9, 0.25),
]

#: (separation, path_steps, exact_share) of the gradient first pass; the first is the default
GRADIENT_RULES = [
    (2, 3, 0.02),
    (1, 3, 0.02),
    (3, 3, 0.02),
    (2, 2, 0.02),
    (2, 4, 0.02),
    (2, 3, 0.0),
    (2, 3, 0.05),
]


def gradient_rules(case, reference: torch.Tensor) -> None:
    """The gradient first pass with each setting of ``GRADIENT_RULES``, against ``reference``
    (exhaustive occlusion at the final window)."""
    forward_s, backward_s = pass_costs(case)
    cost = backward_s / forward_s
    print(f"{case.name}: a pass with its backward costs {cost:.2f} forward passes")
    for separation, steps, share in GRADIENT_RULES:
        params = {"window": FINAL, "stride": FINAL, "baseline": "zero", "first_pass": "gradient"}
        params.update(separation=separation, path_steps=steps, exact_share=share)
        ours, seconds, facts = run_method(case, "occlusion_adaptive", params)
        equivalent = facts["passes"] + facts["backward_passes"] * cost
        print(
            f"  separation {separation}, path_steps {steps}, exact_share {share}: "
            f"{facts['passes']} + {facts['backward_passes']} with backward "
            f"({(reference.numel() // FINAL**3 + 1) / equivalent:.1f}x), top-1% "
            f"{top_overlap(ours, reference):.3f}, Spearman "
            f"{spearman(ours, reference, case.foreground):.3f}, {seconds:.0f} s",
            flush=True,
        )


def up(values: torch.Tensor, factor: int) -> torch.Tensor:
    for axis in range(3):
        values = values.repeat_interleave(factor, axis)
    return values


def replay(drops: dict[int, torch.Tensor], levels: int, share: float, most: float):
    """The adaptive map (one value per final box) and its passes, from each window's box drops."""
    value = torch.zeros((SIZE // FINAL,) * 3, dtype=torch.float64)
    region = None
    passes = 1  # the unoccluded input
    windows = [FINAL * 2**k for k in reversed(range(levels))]
    for level, window in enumerate(windows):
        n, factor = SIZE // window, window // FINAL
        active = torch.ones((n,) * 3, dtype=torch.bool) if region is None else up(region, 2)
        passes += int(active.sum())
        spread = drops[window] * (FINAL / window) ** 3  # to the final box's volume
        value = torch.where(up(active, factor), up(spread, factor), value)
        if level == len(windows) - 1:
            break
        indices = active.flatten().nonzero().flatten()
        chosen = refined_boxes(
            drops[window].flatten()[indices], share, math.ceil(most * len(indices))
        )
        region = torch.zeros(n**3, dtype=torch.bool)
        region[indices[chosen]] = True
        region = region.reshape((n,) * 3)
    return up(value, FINAL).float(), passes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--networks", default=",".join(NETWORKS))
    parser.add_argument(
        "--gradient", action="store_true", help="compare the gradient first pass's settings"
    )
    args = parser.parse_args(argv)
    for case in make_cases(SIZE, (2, 4, 8), torch.device("cpu"), tuple(args.networks.split(","))):
        if args.gradient:
            plain = {"window": FINAL, "stride": FINAL, "baseline": "zero"}
            gradient_rules(case, exhaustive(case, plain, args.cache)["map"])
            continue
        maps = {
            w: exhaustive(case, {"window": w, "stride": w, "baseline": "zero"}, args.cache)["map"]
            for w in (8, 16, 32, 64)
        }
        drops = {w: m[::w, ::w, ::w].double() for w, m in maps.items()}  # one value per box
        reference, where = maps[FINAL], case.foreground
        print(f"{case.name}: exhaustive occlusion at window {FINAL}, {drops[FINAL].numel()} boxes")
        for levels, share, most in RULES:
            ours, passes = replay(drops, levels, share, most)
            print(
                f"  levels {levels}, share {share}, max_refined {most}: {passes} passes "
                f"({(drops[FINAL].numel() + 1) / passes:.1f}x), top-1% "
                f"{top_overlap(ours, reference):.3f}, Spearman {spearman(ours, reference, where):.3f}"
            )
        for window in (16, 32):
            scaled = maps[window] * (FINAL / window) ** 3
            print(
                f"  plain occlusion at window {window}, scaled: top-1% "
                f"{top_overlap(scaled, reference):.3f}, Spearman {spearman(scaled, reference, where):.3f}"
            )
        magnitude = drops[FINAL].abs().flatten().sort(descending=True).values
        held = magnitude.cumsum(0) / magnitude.sum()
        for part in (0.5, 0.9):
            boxes = int((held < part).sum()) + 1
            print(
                f"  {part:.0%} of the absolute drop in {boxes} of {magnitude.numel()} final boxes"
            )
        negative = float((drops[FINAL] < 0).double().mean())
        print(f"  negative final drops: {negative:.1%}")
        for window in (16, 32, 64):
            n = SIZE // window
            children = drops[window // 2].reshape(n, 2, n, 2, n, 2).sum(dim=(1, 3, 5)).flatten()
            parents = drops[window].flatten()
            pearson = float(torch.corrcoef(torch.stack([parents, children]))[0, 1])
            ratio = float(parents.sum() / children.sum())
            print(f"  window {window}: drop / children's sum {ratio:.2f}, Pearson {pearson:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
