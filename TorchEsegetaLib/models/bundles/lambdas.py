"""The Python lambdas of bundle configs that are read, never run.

Bundles write an intensity scaling as ``"$lambda x: (x - 50) / 25"`` and a foreground test as
``"$lambda x: x > 0"``. These two forms are recognised from the expression's syntax tree
(numbers, one variable, + - * /, one comparison), so such a bundle needs no trust: the engine
applies the same map itself.
"""

from __future__ import annotations

import ast


def affine_lambda(text: str) -> tuple[float, float] | None:
    """(a, b) when ``text`` is ``"$lambda x: <expression>"`` of one variable built from +, -,
    *, / and numbers that equals ``a * x + b``; None otherwise. Parsed, never executed."""
    parsed = _lambda_body(text)
    if parsed is None:
        return None
    body, variable = parsed
    try:
        scale, shift = _linear(body, variable)
    except ValueError:
        return None
    return float(scale), float(shift)


def threshold_lambda(text: str) -> float | None:
    """c when ``text`` is ``"$lambda x: x > c"`` (c a number); None otherwise."""
    parsed = _lambda_body(text)
    if parsed is None:
        return None
    body, variable = parsed
    if not (
        isinstance(body, ast.Compare)
        and len(body.ops) == 1
        and isinstance(body.ops[0], ast.Gt)
        and isinstance(body.left, ast.Name)
        and body.left.id == variable
    ):
        return None
    try:
        scale, shift = _linear(body.comparators[0], variable)
    except ValueError:
        return None
    return float(shift) if scale == 0 else None


def is_recognised_expression(text: str) -> bool:
    """Whether a ``$`` expression is one of the lambdas read without running them."""
    return affine_lambda(text) is not None or threshold_lambda(text) is not None


def _lambda_body(text: str) -> tuple[ast.expr, str] | None:
    source = text[1:] if text.startswith("$") else text
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError:
        return None
    node = tree.body
    if not isinstance(node, ast.Lambda):
        return None
    args = node.args
    if len(args.args) != 1 or args.vararg or args.kwarg or args.kwonlyargs or args.defaults:
        return None
    return node.body, args.args[0].arg


def _linear(node: ast.expr, variable: str) -> tuple[float, float]:
    """(a, b) with ``node == a * variable + b``; ValueError for anything else."""
    if isinstance(node, ast.Name) and node.id == variable:
        return 1.0, 0.0
    if (
        isinstance(node, ast.Constant)
        and isinstance(node.value, (int, float))
        and not isinstance(node.value, bool)
    ):
        return 0.0, float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        a, b = _linear(node.operand, variable)
        return (-a, -b) if isinstance(node.op, ast.USub) else (a, b)
    if isinstance(node, ast.BinOp):
        (a1, b1), (a2, b2) = _linear(node.left, variable), _linear(node.right, variable)
        if isinstance(node.op, ast.Add):
            return a1 + a2, b1 + b2
        if isinstance(node.op, ast.Sub):
            return a1 - a2, b1 - b2
        if isinstance(node.op, ast.Mult) and (a1 == 0 or a2 == 0):
            return a1 * b2 + a2 * b1, b1 * b2
        if isinstance(node.op, ast.Div) and a2 == 0 and b2 != 0:
            return a1 / b2, b1 / b2
    raise ValueError("not linear")
