"""A MONAI bundle's inference config as a model card.

Each transform of the bundle's ``preprocessing`` that touches the image becomes a card step
(:mod:`..pipeline`: geometric steps run by MONAI, intensity steps inside the forward pass), in the
bundle's order, with MONAI's defaults filled in; the ``postprocessing`` of the prediction
becomes the card's postprocessing (:mod:`..postprocessing`); the ``inferer`` the sliding-window
settings. What cannot be honoured is listed in ``ignored_preprocessing`` with the reason, and
loading stops on it (unless the card allows it): the network never silently sees another input.

Nothing is instantiated here. The parser of an untrusted bundle holds no ``$`` expression but
the two lambda forms of the allow-list (:mod:`.analysis`), and the lambdas bundles use for an
intensity scaling or a foreground threshold are recognised from their syntax tree
(:mod:`.lambdas`), never executed.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import numpy as np
import torch

from .lambdas import affine_lambda, threshold_lambda

IMAGE_KEY = "image"
PRED_KEY = "pred"

# Transforms that change nothing our reader and forward pass do not already do.
_NO_OPS = set(
    "LoadImage EnsureChannelFirst AddChannel EnsureType ToTensor CastToType ToDevice Identity "
    "ToNumpy CopyItems DeleteItems SaveImage".split()
)
_GEOMETRIC = {
    "Orientation": "orientation",
    "Spacing": "spacing",
    "Resize": "resize",
    "CropForeground": "crop_foreground",
    "SpatialPad": "spatial_pad",
    "DivisiblePad": "divisible_pad",
}
_INTENSITY = {
    "ScaleIntensityRange": "scale_range",
    "ScaleIntensityRangePercentiles": "percentiles",
    "NormalizeIntensity": "zscore",
    "ScaleIntensity": "scale_intensity",
}
_POST = {"Activations", "AsDiscrete", "KeepLargestConnectedComponent", "FillHoles", "LabelFilter"}
_KNOWN = _NO_OPS | set(_GEOMETRIC) | set(_INTENSITY) | _POST | {"Lambda", "Invert"}
#: Arguments of dictionary transforms that say where, not what.
_DICT_ONLY = {
    "keys",
    "allow_missing_keys",
    "lazy",
    "meta_keys",
    "meta_key_postfix",
    "source_key",
    "start_coord_key",
    "end_coord_key",
    "ensure_same_shape",
}
#: Arguments a dictionary transform takes one per key (MONAI's ``ensure_tuple_rep``).
_PER_KEY = {
    "mode",
    "padding_mode",
    "align_corners",
    "dtype",
    "anti_aliasing",
    "anti_aliasing_sigma",
    "softmax",
    "sigmoid",
    "other",
    "argmax",
    "to_onehot",
    "threshold",
    "rounding",
    "nearest_interp",
}
_FLOAT32 = {None, "float32", "torch.float32", "numpy.float32", "np.float32"}


def base_name(name: str) -> str:
    """The array transform's name for a dictionary transform we know ("Spacingd" -> "Spacing")."""
    return name[:-1] if name.endswith("d") and name[:-1] in _KNOWN else name


def preprocessing_steps(parser: Any, card: dict) -> None:
    """The card's ``preprocessing`` (and ``size_divisible`` of a final DivisiblePad) from the
    bundle's preprocessing; problems go to ``card["ignored_preprocessing"]``."""
    steps: list[dict[str, Any]] = []
    for tid, name in transforms_of(parser, "preprocessing"):
        base = base_name(name)
        try:
            keys = _keys(parser, tid)
            if keys is not None and IMAGE_KEY not in keys:
                continue  # a transform of another key (a label, say)
            step = _preprocessing_step(parser, tid, base, keys or [IMAGE_KEY])
        except _Unhonoured as problem:
            card["ignored_preprocessing"].append(f"{name}: {problem}")
            continue
        except Exception as error:  # an argument the config cannot evaluate outside its run
            card["ignored_preprocessing"].append(f"{name}: arguments not readable ({error})")
            continue
        if step is not None:
            steps.append(step)
    # A last zero padding to a multiple after the intensity steps pads the *scaled* image with
    # zeros, which is the forward pass's own padding to size_divisible.
    last = steps[-1] if steps else None
    if (
        last is not None
        and last["kind"] == "divisible_pad"
        and any(s["kind"] in _INTENSITY.values() for s in steps)
        and np.unique(np.asarray(last["k"])).size == 1
        and last.get("method", "symmetric") == "symmetric"
        and last.get("mode", "constant") == "constant"
        and not last.get("value")
    ):
        card["size_divisible"] = int(np.unique(np.asarray(last["k"]))[0])
        steps.pop()
    card["preprocessing"] = steps


class _Unhonoured(Exception):
    """A transform that cannot be applied as the bundle says; the message says why."""


def _preprocessing_step(parser: Any, tid: str, base: str, keys: list[str]) -> dict | None:
    if base in _NO_OPS:
        dtype = arg(parser, tid, "dtype")
        if base in ("CastToType", "EnsureType", "LoadImage") and _dtype_name(dtype) not in _FLOAT32:
            raise _Unhonoured(f"casts the image to {dtype}; the engine works in float32")
        if base == "LoadImage" and arg(parser, tid, "as_closest_canonical"):
            raise _Unhonoured("as_closest_canonical reorients the image; use an Orientationd")
        return None
    if base in _GEOMETRIC:
        args = _image_args(parser, tid, keys)
        if base == "CropForeground":
            args = _crop_foreground_args(parser, tid, args)
        if "dtype" in args:
            args["dtype"] = _dtype_name(args["dtype"])
        step = {"kind": _GEOMETRIC[base], **args}
        from ..pipeline import build_transform

        build_transform(step)  # fails now, with the arguments named, if MONAI refuses them
        return step
    if base in _INTENSITY:
        import monai.transforms as transforms

        parameters = inspect.signature(getattr(transforms, base)).parameters
        defaults = {
            name: p.default
            for name, p in parameters.items()
            if p.default is not inspect.Parameter.empty and name != "dtype"
        }
        args = {k: v for k, v in _image_args(parser, tid, keys).items() if k != "dtype"}
        unknown = sorted(set(args) - set(parameters))
        if unknown:
            raise _Unhonoured(f"arguments {unknown} are not supported")
        return {"kind": _INTENSITY[base], **defaults, **args}
    if base == "Lambda":
        raw = parser.get(f"{tid}::func")
        form = affine_lambda(raw) if isinstance(raw, str) else None
        if form is None:
            raise _Unhonoured(
                f"func {str(raw)[:60]!r} is not of the form lambda x: a * x + b, the only "
                "Lambda the engine can apply inside its forward pass"
            )
        return {"kind": "affine", "scale": form[0], "shift": form[1]}
    raise _Unhonoured("not supported by TorchEsegeta's preprocessing")


def _crop_foreground_args(parser: Any, tid: str, args: dict) -> dict:
    source = arg(parser, tid, "source_key", IMAGE_KEY)
    if source != IMAGE_KEY:
        raise _Unhonoured(f"its foreground comes from {source!r}, which inference does not have")
    raw = parser.get(f"{tid}::select_fn")
    args.pop("select_fn", None)
    if raw is not None:
        threshold = threshold_lambda(raw) if isinstance(raw, str) else None
        if threshold is None:
            raise _Unhonoured(f"select_fn {str(raw)[:60]!r} is not of the form lambda x: x > c")
        args["threshold"] = threshold
    return args


def postprocessing_steps(parser: Any, card: dict, warnings: list[str], probabilities: bool) -> None:
    """The card's ``postprocessing`` and ``activation`` from the bundle's postprocessing.

    ``probabilities``: the bundle's metadata says the network outputs probabilities; an
    activation the postprocessing would apply on top is then left out, with a warning.
    """
    steps: list[dict[str, Any]] = []
    activation = "none" if probabilities else None
    for tid, name in transforms_of(parser, "postprocessing"):
        base = base_name(name)
        try:
            keys = _keys(parser, tid)
            if keys is not None and PRED_KEY not in keys:
                continue
            if base in _NO_OPS:
                continue
            if base == "Invert":
                nearest = arg(parser, tid, "nearest_interp", True)
                if isinstance(nearest, list):
                    nearest = nearest[(keys or [PRED_KEY]).index(PRED_KEY)]
                steps.append({"kind": "invert", "nearest": bool(nearest)})
                continue
            if base not in _POST:
                raise _Unhonoured("not supported by TorchEsegeta's postprocessing")
            args = {
                k: v
                for k, v in _image_args(parser, tid, keys or [PRED_KEY], PRED_KEY).items()
                if k != "dtype"
            }
            if base == "Activations":
                if args.get("other") is not None:
                    raise _Unhonoured("its 'other' function cannot be read without running it")
                chosen = (
                    "softmax" if args.get("softmax") else "sigmoid" if args.get("sigmoid") else None
                )
                if chosen and probabilities:
                    warnings.append(
                        f"the bundle's {name} applies {chosen} to outputs its metadata calls "
                        "probabilities; it is not applied a second time (to do as the bundle, "
                        f'give --card \'{{"activation": "{chosen}"}}\')'
                    )
                    continue
                activation = activation or chosen
            steps.append({"kind": "transform", "name": base, "args": args})
        except _Unhonoured as problem:
            card["ignored_preprocessing"].append(f"postprocessing {name}: {problem}")
        except Exception as error:
            card["ignored_preprocessing"].append(
                f"postprocessing {name}: arguments not readable ({error})"
            )
    if activation is None and any("threshold" in (s.get("args") or {}) for s in steps):
        activation = (
            "none"  # the raw outputs are thresholded: the bundle reads them as probabilities
        )
    if activation is not None:
        card["activation"] = activation
    card["postprocessing"] = steps


def inferer_settings(parser: Any, card: dict) -> None:
    """Sliding-window settings (or the whole volume at once) from the bundle's inferer."""
    entries = transforms_of(parser, "inferer")
    if not entries:
        return
    tid, name = entries[0]
    if name == "SimpleInferer":
        card["roi_size"] = None
        return
    if name not in ("SlidingWindowInferer", "SlidingWindowInfererAdapt"):
        card["ignored_preprocessing"].append(f"inferer {name}: not supported")
        return
    try:
        roi = np.broadcast_to(np.asarray(arg(parser, tid, "roi_size"), dtype=int), (3,))
        card.update(
            roi_size=[int(r) for r in roi],
            overlap=float(np.max(arg(parser, tid, "overlap", 0.25))),
            sw_batch_size=int(arg(parser, tid, "sw_batch_size", 1)),
            sw_mode=str(arg(parser, tid, "mode", "constant")),
        )
        for key, default in (("sigma_scale", 0.125), ("padding_mode", "constant"), ("cval", 0.0)):
            value = arg(parser, tid, key, default)
            if np.any(np.asarray(value) != default):
                card["ignored_preprocessing"].append(
                    f"inferer {name}: {key}={value} (only {default} is supported)"
                )
    except Exception as error:  # an argument the config cannot evaluate outside its run
        card["ignored_preprocessing"].append(f"inferer {name}: arguments not readable ({error})")


# --- reading the raw config ------------------------------------------------------------------

_REFERENCE = re.compile(r"@([\w:#]+)")


def transforms_of(parser: Any, tid: str, depth: int = 0) -> list[tuple[str, str]]:
    """(config id, class name) of each transform under ``tid`` in the raw config.

    Follows a Compose's ``transforms``, lists, and ``@`` references (also inside ``$``
    expressions such as ``"$@pre + @post"``); never instantiates anything.
    """
    raw = parser.get(tid)
    if depth > 20 or raw is None:
        return []
    if isinstance(raw, str):
        refs = [r.replace("#", "::") for r in _REFERENCE.findall(raw)]
        if not refs:
            return [(tid, f"expression {raw[:60]!r}")]
        return [entry for ref in refs for entry in transforms_of(parser, ref, depth + 1)]
    if isinstance(raw, list):
        return [e for i in range(len(raw)) for e in transforms_of(parser, f"{tid}::{i}", depth + 1)]
    if (
        not isinstance(raw, dict)
        or "_target_" not in raw
        or raw.get("_disabled_") in (True, "true")
    ):
        return []
    name = str(raw["_target_"]).split(".")[-1]
    if name == "Compose":
        return transforms_of(parser, f"{tid}::transforms", depth + 1)
    return [(tid, name)]


def arg(parser: Any, tid: str, key: str, default: Any = None) -> Any:
    """An argument of a config component with its references and expressions resolved."""
    raw = parser.get(tid)
    if not isinstance(raw, dict) or key not in raw:
        return default
    value = parser.get_parsed_content(f"{tid}::{key}", instantiate=False)
    if isinstance(value, (torch.Tensor, np.ndarray, tuple)):
        value = np.asarray(value).tolist()
    return value


def arg_or_none(parser: Any, tid: str, key: str) -> Any:
    try:
        return arg(parser, tid, key)
    except Exception:  # evaluable only inside the bundle's own run; the card keeps its default
        return None


def _keys(parser: Any, tid: str) -> list[str] | None:
    keys = arg(parser, tid, "keys")
    if keys is None:
        return None
    return [str(k) for k in (keys if isinstance(keys, list) else [keys])]


def _image_args(parser: Any, tid: str, keys: list[str], key: str = IMAGE_KEY) -> dict[str, Any]:
    """A dictionary transform's arguments for one key: per-key arguments given as one value per
    key (MONAI's rule) reduced to that key's value; arguments saying where dropped."""
    raw = parser.get(tid)
    index = keys.index(key) if key in keys else 0
    args: dict[str, Any] = {}
    for name in raw:
        if name.startswith("_") or name in _DICT_ONLY or name in ("select_fn", "func"):
            continue
        value = arg(parser, tid, name)
        if (
            name in _PER_KEY
            and isinstance(value, list)
            and len(value) == len(keys)
            and len(keys) > 1
        ):
            value = value[index]
        args[name] = value
    return args


def _dtype_name(dtype: Any) -> str | None:
    if dtype is None:
        return None
    if isinstance(dtype, torch.dtype):
        return str(dtype).replace("torch.", "")
    try:
        return np.dtype(dtype).name
    except TypeError:
        return str(dtype)
