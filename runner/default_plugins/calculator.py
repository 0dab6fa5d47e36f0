"""The `calculator` tool: arithmetic on simpleeval, with no eval, no strings, no attribute
access, and bounded expression length, exponents, shifts, round()'s digits and result size.

It runs in-process (a call costs microseconds): every operation is bounded before CPython
runs it in C, so no call can hold the GIL past its timeout. `- calculator: {isolation:
process}` in a spec adds a hard backstop, at the cost of a process per call."""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import Field

from ..hookspecs import hookimpl
from ..tools import tool

MAX_EXPRESSION = 500
MAX_EXPONENT = 10_000
MAX_RESULT_BITS = 100_000
MAX_NDIGITS = 1_000
"""round()'s digits: round(1, -10**8) would compute 10**(10**8) in C, holding the GIL."""

# Every operation on a big number is bounded before CPython runs it in C (where it holds the
# GIL, so no timeout, signal or deadline can interrupt it): results stay under
# MAX_RESULT_BITS, so each step is milliseconds and the 500-character expression is too.
# Our own table, not simpleeval's defaults, so a simpleeval release cannot widen it.


def _size(x: Any) -> str:
    """A number as text for an error message; never str() of a huge int (slow, and capped)."""
    if isinstance(x, int) and x.bit_length() > 64:
        return f"a {int(x.bit_length() * 0.30103) + 1}-digit number"
    return repr(x)


def _power(a: Any, b: Any) -> Any:
    if abs(b) > MAX_EXPONENT or (abs(a) > 1 and abs(b) * math.log2(abs(a)) > MAX_RESULT_BITS):
        raise ValueError(f"{_size(a)} ** {_size(b)} is too large to compute (exponents are "
                         f"limited to {MAX_EXPONENT} and results to {MAX_RESULT_BITS} bits)")
    return operator.pow(a, b)


def _mul(a: Any, b: Any) -> Any:
    if isinstance(a, int) and isinstance(b, int) and a.bit_length() + b.bit_length() > MAX_RESULT_BITS:
        raise ValueError(f"the product is too large to compute (results are limited to "
                         f"{MAX_RESULT_BITS} bits)")
    return operator.mul(a, b)


def _shift(op: Callable[[Any, Any], Any], symbol: str) -> Callable[[Any, Any], Any]:
    def shift(a: Any, b: Any) -> Any:
        if isinstance(a, int) and isinstance(b, int) and abs(b) > MAX_RESULT_BITS:
            raise ValueError(f"{_size(a)} {symbol} {_size(b)} is too large to compute (shifts "
                             f"are limited to {MAX_RESULT_BITS} bits)")
        if symbol == "<<" and isinstance(a, int) and isinstance(b, int) and \
                a.bit_length() + b > MAX_RESULT_BITS:
            raise ValueError(f"{_size(a)} << {b} is too large to compute (results are limited "
                             f"to {MAX_RESULT_BITS} bits)")
        return op(a, b)

    return shift


def _round(number: Any, ndigits: Any = None) -> Any:
    if ndigits is None:
        return round(number)
    if not isinstance(ndigits, int):
        raise ValueError("round's second argument (the digits) must be a whole number")
    if abs(ndigits) > MAX_NDIGITS:
        raise ValueError(f"round's digits must be between -{MAX_NDIGITS} and {MAX_NDIGITS} "
                         f"(got {_size(ndigits)})")
    return round(number, ndigits)


_OPERATORS: dict[type, Callable[..., Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: _mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: _power,
    ast.LShift: _shift(operator.lshift, "<<"), ast.RShift: _shift(operator.rshift, ">>"),
    ast.BitAnd: operator.and_, ast.BitOr: operator.or_, ast.BitXor: operator.xor,
    ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Invert: operator.invert}
_FUNCTIONS = {"sqrt": math.sqrt, "abs": abs, "round": _round, "min": min, "max": max,
              "floor": math.floor, "ceil": math.ceil, "log": math.log, "log10": math.log10,
              "exp": math.exp, "sin": math.sin, "cos": math.cos, "tan": math.tan}
_NAMES = {"pi": math.pi, "e": math.e}
_ALLOWED = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Constant, ast.Call, ast.Name, ast.Load,
            *_OPERATORS)


def evaluate(expression: str) -> int | float:
    """Evaluate an arithmetic expression safely; raise ValueError with a reason."""
    from simpleeval import SimpleEval

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
    try:
        value = SimpleEval(operators=_OPERATORS, functions=_FUNCTIONS, names=_NAMES).eval(
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


_CALL = "|".join(sorted(_FUNCTIONS, key=len, reverse=True))
_OPERAND = rf"( *(-|[(]|({_CALL})[(]))* *([0-9]+([.][0-9]+)?|pi|e)( *[)])*"
EXPRESSION = rf"^{_OPERAND}( *([*][*]|//|[-+*/%^,]){_OPERAND})* *$"
"""What an expression looks like, token by token, in the tool's schema (only for models that
are held to it, such as the embedded one's grammar: evaluate() is the real check, with its
own clear errors): numbers, pi and e, the operators, parentheses and the functions. Classes,
not escapes (`[.]`, not `\\.`): llama-cpp-python's converter turns `\\.` into an escape that
llama.cpp's grammar parser rejects."""


def format_number(value: int | float) -> str:
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.12g}"
    if value.bit_length() > 13_000:
        return f"a number with about {int(value.bit_length() * 0.30103)} digits"
    return str(value)


@tool(name="calculator", timeout_s=2.0)
def calculator(expression: Annotated[str, Field(description="an arithmetic expression such as 17*23",
                                                json_schema_extra={"pattern": EXPRESSION})]) -> str:
    """Evaluates an arithmetic expression, such as 2*(3+4) or sqrt(16)."""
    return format_number(evaluate(expression))


@hookimpl
def register_tools(register: Any) -> None:
    register(calculator)
