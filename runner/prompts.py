"""The sandboxed Jinja2 environment and rendering of the master prompt.

Values (the user's input, observations, memory) are passed in as data: Jinja2 never renders
a value as a template, so an observation containing `{{ 7*7 }}` stays literal. Templates come
from the spec's project root or the package, by real path (a symlink out of either is
refused); StrictUndefined turns a missing variable into an
error naming it. Caps: the output size; the size of any value a template builds (the
result of every call, filter, `~`, `%`, and of `*` and `+` before they are computed); widths
in format strings and padding filters; and the time, checked in every loop iteration and
call, so a template that loops without writing anything is stopped too.
"""

from __future__ import annotations

import contextvars
import operator
import os
import re
import string
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import jinja2
from jinja2 import nodes
from jinja2.sandbox import SandboxedEnvironment
from jinja2.visitor import NodeTransformer

from .errors import TemplateError

if TYPE_CHECKING:
    from .spec import PromptSpec, SpecSource

__all__ = ["PromptTemplate", "environment", "load_template", "DEFAULT_TEMPLATE",
           "MAX_OUTPUT_CHARS"]

Prepare = Callable[..., None]

DEFAULT_TEMPLATE = "react.md.j2"
MAX_OUTPUT_CHARS = 2_000_000
MAX_SEQUENCE = 1_000_000
MAX_RENDER_S = 2.0
MAX_TEMPLATE_BYTES = 1_000_000


_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("deadline", default=None)
_LOOP_GUARD, _CONCAT = "_runner_loop_guard", "_runner_concat"
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0 +-]*(\*|\d+)?(?:\.(\*|\d+))?")


def _refuse(reason: str) -> NoReturn:
    raise jinja2.exceptions.SecurityError(reason)


def _check_time() -> None:
    deadline = _deadline.get()
    if deadline is not None and time.monotonic() > deadline:
        _refuse(f"rendering took longer than {MAX_RENDER_S}s")


def _check_size(value: Any) -> Any:
    """Refuse a built string or sequence larger than the whole prompt may be."""
    if isinstance(value, (str, list, tuple)) and len(value) > MAX_OUTPUT_CHARS:
        _refuse(f"a value of {len(value)} items was built (limit {MAX_OUTPUT_CHARS})")
    return value


def _check_width(width: Any) -> None:
    if isinstance(width, int) and width > MAX_SEQUENCE:
        _refuse(f"width {width} is larger than {MAX_SEQUENCE}")


def _check_format(fmt: Any) -> None:
    """Refuse `%` and `{}` format strings whose widths could build a huge string."""
    if not isinstance(fmt, str):
        return
    for m in _PERCENT_SPEC.finditer(fmt):
        for group in m.groups():
            if group == "*":
                _refuse("a '*' width in % formatting is not allowed in templates")
            if group:
                _check_width(int(group))
    try:
        specs = [spec for _, field, spec, _ in string.Formatter().parse(fmt) if field is not None]
    except ValueError:
        return  # not a valid {} format; str.format itself will say so
    for spec in specs:
        if spec and "{" in spec:
            _refuse("nested {} in a format spec is not allowed in templates")
        for digits in re.findall(r"\d+", spec or ""):
            _check_width(int(digits))


def _guard_loop(iterable: Iterable[Any]) -> Iterator[Any]:
    """Wrapped around every `{% for %}` iterable: checks the time cap on each iteration."""
    for item in iterable:
        _check_time()
        yield item


def _concat(parts: list[Any]) -> str:
    """`a ~ b`, as Jinja2's own str_join, with the size checked before joining."""
    texts = [str(p) for p in parts]
    if sum(map(len, texts)) > MAX_OUTPUT_CHARS:
        _refuse(f"`~` would make more than {MAX_OUTPUT_CHARS} characters")
    return "".join(texts)


def _guarded_filter(fn: Callable[..., Any], check: Callable[..., None] | None
                    ) -> Callable[..., Any]:
    """`fn` with `check(value, *args)` before and a size check after; keeps Jinja2's
    pass_context-style marker."""
    passes = getattr(fn, "jinja_pass_arg", None)

    def guarded(*args: Any, **kwargs: Any) -> Any:
        if check is not None:
            check(*(args[1:] if passes is not None else args), **kwargs)
        return _check_size(fn(*args, **kwargs))

    guarded.__name__ = getattr(fn, "__name__", "filter")
    if passes is not None:
        guarded.jinja_pass_arg = passes  # type: ignore[attr-defined]
    return guarded


def _replace_size(value: Any, old: Any = "", new: Any = "", count: Any = None) -> None:
    if isinstance(value, str) and isinstance(old, str) and isinstance(new, str) and old:
        n = value.count(old) if count is None or count < 0 else min(count, value.count(old))
        if len(value) + n * (len(new) - len(old)) > MAX_OUTPUT_CHARS:
            _refuse(f"replace would make more than {MAX_OUTPUT_CHARS} characters")


_FILTER_CHECKS: dict[str, Callable[..., None]] = {
    "center": lambda value, width=80, *a, **k: _check_width(width),
    "indent": lambda value, width=4, *a, **k: _check_width(width),
    "format": lambda value, *a, **k: _check_format(value),
    "replace": _replace_size,
}
_STR_METHOD_CHECKS: dict[str, Callable[..., None]] = {
    "center": lambda s, width=0, *a: _check_width(width),
    "ljust": lambda s, width=0, *a: _check_width(width),
    "rjust": lambda s, width=0, *a: _check_width(width),
    "zfill": lambda s, width=0, *a: _check_width(width),
    "expandtabs": lambda s, tabsize=8: _check_width(tabsize * max(1, s.count("\t"))),
    "replace": _replace_size,
    "format": lambda s, *a, **k: _check_format(s),
    "format_map": lambda s, *a, **k: _check_format(s),
}


class _Guards(NodeTransformer):
    """Rewrites a parsed template: every `for` iterates through the time check, every `~`
    goes through the size-checked join."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        node = self.generic_visit(node)
        node.iter = nodes.Filter(node.iter, _LOOP_GUARD, [], [], None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        node = self.generic_visit(node)
        return nodes.Filter(nodes.List(node.nodes, lineno=node.lineno), _CONCAT, [], [], None,
                            None, lineno=node.lineno)


class _Env(SandboxedEnvironment):
    """The sandbox plus the caps in this module's docstring."""

    intercepted_binops = frozenset({"*", "+", "**", "%"})

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name, fn in list(self.filters.items()):
            self.filters[name] = _guarded_filter(fn, _FILTER_CHECKS.get(name))
        self.filters[_LOOP_GUARD] = _guard_loop
        self.filters[_CONCAT] = _concat

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = _Guards().visit(super()._parse(source, name, filename))
        assert isinstance(tree, nodes.Template)
        return tree

    def call(__self, __context: Any, __obj: Any, *args: Any,  # noqa: N805 (as Jinja2 names them)
             **kwargs: Any) -> Any:
        _check_time()
        target = getattr(__obj, "__wrapped__", __obj)  # str.format arrives wrapped
        owner = getattr(target, "__self__", None)
        if isinstance(owner, str):
            check = _STR_METHOD_CHECKS.get(getattr(target, "__name__", ""))
            if check is not None:
                check(owner, *args, **kwargs)
        return _check_size(super().call(__context, __obj, *args, **kwargs))

    def call_binop(self, context: Any, operator_name: str, left: Any, right: Any) -> Any:
        if operator_name == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) \
                        and len(seq) * n > MAX_SEQUENCE:
                    _refuse(f"repetition would make {len(seq) * n} items (limit {MAX_SEQUENCE})")
        if operator_name == "**" and isinstance(right, int) and abs(right) > 1000:
            _refuse("exponent larger than 1000")
        if operator_name == "+" and hasattr(left, "__len__") and hasattr(right, "__len__") \
                and len(left) + len(right) > MAX_SEQUENCE:
            _refuse("concatenation too large")
        if operator_name == "%":
            _check_format(left)
        return _check_size({"*": operator.mul, "+": operator.add, "**": operator.pow,
                            "%": operator.mod}[operator_name](left, right))


_PACKAGE_TEMPLATES = Path(__file__).parent / "templates"


class _ConfinedLoader(jinja2.FileSystemLoader):
    """A FileSystemLoader that refuses a template whose real path (symlinks followed) is
    outside its folder, so a symlink in the repository cannot send an outside file to the
    model through `{% include %}`, `{% import %}` or `{% extends %}`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder.resolve()
        super().__init__(str(self.folder))

    def get_source(self, environment: jinja2.Environment, template: str
                   ) -> tuple[str, str, Callable[[], bool]]:
        # judged before anything is read: a symlink to a huge file or to /proc is refused
        # unopened
        path = self.folder.joinpath(*jinja2.loaders.split_template_path(template))
        if os.path.lexists(path):
            real = path.resolve()
            if not real.is_relative_to(self.folder):
                raise jinja2.exceptions.SecurityError(
                    f"template {template!r} resolves outside the project root {self.folder}")
            if not real.is_file():  # a FIFO or a device may never end
                raise jinja2.exceptions.SecurityError(f"template {template!r} is not a file")
            if real.stat().st_size > MAX_TEMPLATE_BYTES:
                raise jinja2.exceptions.SecurityError(
                    f"template {template!r} is larger than {MAX_TEMPLATE_BYTES} bytes")
        return super().get_source(environment, template)


_envs: dict[tuple[Path, Any], _Env] = {}


def environment(root: Path, prepare: Prepare | None = None) -> _Env:
    """The sandboxed environment for one project root (cached); `prepare(env=...)` (the
    plugins' prepare_jinja2_environment hook) adjusts it once, before any template loads."""
    env = _envs.get((root, prepare))  # an environment prepared by other hooks is another one
    if env is None:
        env = _Env(loader=jinja2.ChoiceLoader([_ConfinedLoader(root),
                                               _ConfinedLoader(_PACKAGE_TEMPLATES)]),
                   undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True,
                   trim_blocks=True, lstrip_blocks=True)
        if prepare is not None:
            prepare(env=env)
        _envs[(root, prepare)] = env
    return env


_templates: dict[tuple[Path, str | None, str | None, Any], PromptTemplate] = {}


def load_template(src: SpecSource, prompt: PromptSpec, kind: str,
                  prepare: Prepare | None = None) -> PromptTemplate:
    """A spec's compiled template (cached per project root, file and text); errors name the
    spec's key."""
    if prompt.template and prompt.text:
        raise src.error(("prompt", "text"), "give prompt.template or prompt.text, not both")
    if kind == "chain" and not (prompt.template or prompt.text):
        raise src.error(("prompt",), "a chain needs prompt.template or prompt.text")
    name = None
    if prompt.template:
        path = src.resolve(prompt.template, ("prompt", "template"))
        if not path.is_file():
            raise src.error(("prompt", "template"), f"template file {prompt.template!r} not found")
        name = path.relative_to(src.root).as_posix()
    key = (src.root, name, prompt.text, prepare)
    tmpl = _templates.get(key)
    if tmpl is None:
        try:
            tmpl = PromptTemplate(src.root, name=name, text=prompt.text, prepare=prepare,
                                  origin=f"{src.path}: prompt.text" if prompt.text
                                  else str(src.path))
        except TemplateError as exc:
            if prompt.text and exc.line is not None:
                raise src.error(("prompt", "text"), f"{exc.reason} (line {exc.line} of the "
                                                    f"template)") from None
            raise
        _templates[key] = tmpl
    return tmpl


class PromptTemplate:
    """A compiled template plus where it came from, for error messages."""

    def __init__(self, root: Path, *, name: str | None = None, text: str | None = None,
                 origin: str = "<inline>", prepare: Prepare | None = None) -> None:
        env = environment(root, prepare)
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
        except jinja2.exceptions.SecurityError as exc:
            raise TemplateError(f"refused: {exc}", path=origin) from None

    def render(self, **values: Any) -> str:
        """Render with `values` as data; raise TemplateError naming the template and line."""
        out: list[str] = []
        size = 0
        deadline = time.monotonic() + MAX_RENDER_S
        token = _deadline.set(deadline)
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
            raise self._error(f"refused by the sandbox: {exc}", exc) from None
        except jinja2.UndefinedError as exc:
            raise self._error(f"undefined variable: {exc.message}", exc) from None
        except (OverflowError, MemoryError, RecursionError) as exc:
            raise self._error(f"refused: {type(exc).__name__}: {exc}", exc) from None
        except Exception as exc:
            raise self._error(f"render failed: {type(exc).__name__}: {exc}", exc) from None
        finally:
            _deadline.reset(token)
        return "".join(out)

    def _error(self, reason: str, exc: BaseException) -> TemplateError:
        path, line = _template_location(exc)
        if path is None or path.startswith("<"):  # an inline template: name where it came from
            path = self.origin
        return TemplateError(reason, path=path, line=line)


def _template_location(exc: BaseException) -> tuple[str | None, int | None]:
    """The template file and line a render error happened at. Jinja2 rewrites the traceback
    so that template frames carry the template's file name and line number."""
    tb = exc.__traceback__
    where: tuple[str | None, int | None] = (None, None)
    while tb is not None:
        if "__jinja_exception__" in tb.tb_frame.f_globals:
            where = (tb.tb_frame.f_code.co_filename, tb.tb_lineno)
        tb = tb.tb_next
    return where
