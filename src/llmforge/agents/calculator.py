"""Tool `calculator`: arithmetic on numbers, evaluated from the expression's syntax tree.

Accepted: numbers, `+ - * / // % **`, parentheses, the functions and constants of `math` that take
and give numbers (`sqrt`, `log`, `sin`, `pi`, ...), `abs`, `round`, `min`, `max`. Nothing else is
evaluated (no names, attributes, calls of other functions), and exponents and results are bounded
so an expression cannot hang the process. It does not do symbolic algebra or units.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import Field

from llmforge.agents.tools import FunctionTool, ToolEnv, ToolResult

MAX_EXPONENT = 10_000
MAX_DIGITS = 5_000  # integers longer than this are refused
MAX_LENGTH = 1_000

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}
_MATH = (
    "sqrt exp log log10 log2 sin cos tan asin acos atan atan2 sinh cosh tanh degrees radians "
    "floor ceil factorial gcd hypot isqrt comb perm"
)
_FUNCTIONS: dict[str, Callable[..., Any]] = {name: getattr(math, name) for name in _MATH.split()}
_FUNCTIONS.update({"abs": abs, "round": round, "min": min, "max": max})
_CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau, "inf": math.inf}


class CalculationError(ValueError):
    pass


def evaluate(expression: str) -> int | float:
    """The value of an arithmetic expression; CalculationError says what is not allowed."""
    if len(expression) > MAX_LENGTH:
        raise CalculationError(f"expression longer than {MAX_LENGTH} characters")
    try:
        tree = ast.parse(expression.replace("^", "**"), mode="eval")
    except SyntaxError:
        raise CalculationError(f"not an arithmetic expression: {expression!r}") from None
    return _eval(tree.body)


def _eval(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return node.value
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise CalculationError(f"exponent {right} is too large (at most {MAX_EXPONENT})")
        try:
            value = _BINARY[type(node.op)](left, right)
        except ZeroDivisionError:
            raise CalculationError("division by zero") from None
        return _bounded(value)
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCTIONS
        and not node.keywords
    ):
        args = [_eval(a) for a in node.args]
        if node.func.id in ("factorial", "comb", "perm") and any(a > 1000 for a in args):
            raise CalculationError(f"{node.func.id} of numbers above 1000 is refused")
        try:
            return _bounded(_FUNCTIONS[node.func.id](*args))
        except (ValueError, TypeError, OverflowError) as e:
            raise CalculationError(f"{node.func.id}: {e}") from None
    raise CalculationError(
        f"'{ast.unparse(node)}' is not allowed: use numbers, + - * / // % **, parentheses and "
        "math functions such as sqrt, log, sin"
    )


def _bounded(value: Any) -> Any:
    if isinstance(value, int) and value.bit_length() > MAX_DIGITS * 3.33:
        raise CalculationError("the result is too large")
    return value


def create(_env: ToolEnv) -> FunctionTool:
    def calculator(
        expression: Annotated[str, Field(description="e.g. '(17 * 23) + sqrt(2)'; ^ means power")],
    ) -> ToolResult:
        """Evaluate an arithmetic expression exactly. Use it for any arithmetic."""
        try:
            value = evaluate(expression)
        except CalculationError as e:
            return ToolResult.error(str(e))
        return ToolResult(text=f"{expression} = {value}")

    return FunctionTool(calculator)
