"""The `calculator` tool: arithmetic on simpleeval, with no eval, no strings, no attribute
access, and bounded expression length, exponents and result size."""

from __future__ import annotations

import ast
import math
import operator
from typing import Annotated, Any

from pydantic import Field

from ..hookspecs import hookimpl
from ..tools import tool

MAX_EXPRESSION = 500
MAX_EXPONENT = 10_000
MAX_RESULT_BITS = 100_000

_FUNCTIONS = {"sqrt": math.sqrt, "abs": abs, "round": round, "min": min, "max": max,
              "floor": math.floor, "ceil": math.ceil, "log": math.log, "log10": math.log10,
              "exp": math.exp, "sin": math.sin, "cos": math.cos, "tan": math.tan}
_NAMES = {"pi": math.pi, "e": math.e}
_ALLOWED = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Constant, ast.Call, ast.Name, ast.Load,
            ast.operator, ast.unaryop)


def _power(a: Any, b: Any) -> Any:
    if abs(b) > MAX_EXPONENT or (abs(a) > 1 and abs(b) * math.log2(abs(a)) > MAX_RESULT_BITS):
        raise ValueError(f"{a} ** {b} is too large to compute")
    return operator.pow(a, b)


def _mul(a: Any, b: Any) -> Any:
    if isinstance(a, int) and isinstance(b, int) and a.bit_length() + b.bit_length() > MAX_RESULT_BITS:
        raise ValueError("the product is too large to compute")
    return operator.mul(a, b)


def evaluate(expression: str) -> int | float:
    """Evaluate an arithmetic expression safely; raise ValueError with a reason."""
    from simpleeval import DEFAULT_OPERATORS, SimpleEval

    expr = expression.strip().replace("×", "*").replace("÷", "/").replace("^", "**")
    if not expr:
        raise ValueError("empty expression")
    if len(expr) > MAX_EXPRESSION:
        raise ValueError(f"expression longer than {MAX_EXPRESSION} characters")
    try:
        tree = ast.parse(expr, mode="eval")
    except (SyntaxError, RecursionError, MemoryError, ValueError):
        raise ValueError(f"not an arithmetic expression: {expr}") from None
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED) or (isinstance(node, ast.Constant) and (
                isinstance(node.value, bool) or not isinstance(node.value, (int, float)))):
            raise ValueError(f"only numbers, + - * / // % ** and {', '.join(_FUNCTIONS)} are "
                             f"allowed (found {type(node).__name__})")
    ops = dict(DEFAULT_OPERATORS)
    ops[ast.Pow], ops[ast.Mult] = _power, _mul
    try:
        value = SimpleEval(operators=ops, functions=_FUNCTIONS, names=_NAMES).eval(
            expr, previously_parsed=tree.body)
    except ZeroDivisionError:
        raise ValueError("division by zero") from None
    except (OverflowError, RecursionError, MemoryError, TypeError) as exc:
        raise ValueError(f"cannot compute: {type(exc).__name__}") from None
    except Exception as exc:  # simpleeval's own InvalidExpression family
        raise ValueError(str(exc)) from None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError("the result is not a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("the result is too large for a floating-point number")
    return value


def format_number(value: int | float) -> str:
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.12g}"
    if value.bit_length() > 13_000:
        return f"a number with about {int(value.bit_length() * 0.30103)} digits"
    return str(value)


@tool(name="calculator", timeout_s=2.0)
def calculator(expression: Annotated[str, Field(description="an arithmetic expression such as 17*23")]) -> str:
    """Evaluates an arithmetic expression, such as 2*(3+4) or sqrt(16)."""
    return format_number(evaluate(expression))


@hookimpl
def register_tools(register: Any) -> None:
    register(calculator)
