"""The sandboxed Jinja2 environment and rendering of the master prompt.

Values (the user's input, observations, memory) are passed in as data: Jinja2 never renders
a value as a template, so an observation containing `{{ 7*7 }}` stays literal. Templates come
from the spec's project root or the package; StrictUndefined turns a missing variable into an
error naming it; output size and the size of `*` and `+` results are capped.
"""

from __future__ import annotations

import operator
import time
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from .errors import TemplateError

__all__ = ["PromptTemplate", "environment", "DEFAULT_TEMPLATE", "MAX_OUTPUT_CHARS"]

DEFAULT_TEMPLATE = "react.md.j2"
MAX_OUTPUT_CHARS = 2_000_000
MAX_SEQUENCE = 1_000_000
MAX_RENDER_S = 2.0


class _Env(SandboxedEnvironment):
    """Refuses `*`, `+` and `**` results that would be huge before computing them."""

    intercepted_binops = frozenset({"*", "+", "**"})

    def call_binop(self, context: Any, operator_name: str, left: Any, right: Any) -> Any:
        if operator_name == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) \
                        and len(seq) * n > MAX_SEQUENCE:
                    raise jinja2.exceptions.SecurityError(
                        f"repetition would make {len(seq) * n} items (limit {MAX_SEQUENCE})")
        if operator_name == "**" and isinstance(right, int) and abs(right) > 1000:
            raise jinja2.exceptions.SecurityError("exponent larger than 1000")
        if operator_name == "+" and hasattr(left, "__len__") and hasattr(right, "__len__") \
                and len(left) + len(right) > MAX_SEQUENCE:
            raise jinja2.exceptions.SecurityError("concatenation too large")
        return {"*": operator.mul, "+": operator.add, "**": operator.pow}[operator_name](left, right)


_PACKAGE_TEMPLATES = Path(__file__).parent / "templates"
_envs: dict[Path, _Env] = {}


def environment(root: Path) -> _Env:
    """The sandboxed environment for one project root (cached)."""
    env = _envs.get(root)
    if env is None:
        env = _Env(loader=jinja2.ChoiceLoader([jinja2.FileSystemLoader(str(root)),
                                               jinja2.FileSystemLoader(str(_PACKAGE_TEMPLATES))]),
                   undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True,
                   trim_blocks=True, lstrip_blocks=True)
        from .plugins import hook

        hook().prepare_jinja2_environment(env=env)
        _envs[root] = env
    return env


class PromptTemplate:
    """A compiled template plus where it came from, for error messages."""

    def __init__(self, root: Path, *, name: str | None = None, text: str | None = None,
                 origin: str = "<inline>") -> None:
        env = environment(root)
        self.origin = origin
        try:
            if text is not None:
                self.template = env.from_string(text)
            else:
                self.template = env.get_template(name or DEFAULT_TEMPLATE)
                self.origin = self.template.filename or origin
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"template syntax error: {exc.message}",
                                path=exc.filename or origin, line=exc.lineno) from None
        except jinja2.TemplateNotFound as exc:
            raise TemplateError(f"template {exc.name!r} not found under {root} or the package",
                                path=origin) from None

    def render(self, **values: Any) -> str:
        """Render with `values` as data; raise TemplateError naming the template and line."""
        out: list[str] = []
        size = 0
        deadline = time.monotonic() + MAX_RENDER_S
        try:
            for chunk in self.template.generate(**values):
                size += len(chunk)
                out.append(chunk)
                if size > MAX_OUTPUT_CHARS:
                    raise TemplateError(f"rendered prompt is larger than {MAX_OUTPUT_CHARS} "
                                        f"characters", path=self.origin)
                if time.monotonic() > deadline:
                    raise TemplateError(f"rendering took longer than {MAX_RENDER_S}s",
                                        path=self.origin)
        except TemplateError:
            raise
        except jinja2.exceptions.SecurityError as exc:
            raise TemplateError(f"refused by the sandbox: {exc}", path=self.origin,
                                line=_template_line(exc)) from None
        except jinja2.UndefinedError as exc:
            raise TemplateError(f"undefined variable: {exc.message}", path=self.origin,
                                line=_template_line(exc)) from None
        except (OverflowError, MemoryError, RecursionError) as exc:
            raise TemplateError(f"refused: {type(exc).__name__}: {exc}", path=self.origin,
                                line=_template_line(exc)) from None
        except Exception as exc:
            raise TemplateError(f"render failed: {type(exc).__name__}: {exc}", path=self.origin,
                                line=_template_line(exc)) from None
        return "".join(out)


def _template_line(exc: BaseException) -> int | None:
    """The template line a render error happened on (Jinja2 keeps it in the traceback)."""
    tb = exc.__traceback__
    line = None
    while tb is not None:
        if tb.tb_frame.f_globals.get("__jinja_template__") is not None:
            tmpl = tb.tb_frame.f_globals["__jinja_template__"]
            line = tmpl.get_corresponding_lineno(tb.tb_lineno)
        tb = tb.tb_next
    return line
