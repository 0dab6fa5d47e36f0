"""The command line. Heavy imports (pydantic models, LiteLLM, llama.cpp) happen inside the
commands that need them, so `runner --help` starts fast."""

from __future__ import annotations

import json
import os
import sys
from typing import Any, NoReturn

import click

from .errors import EXIT_FAILED, EXIT_OK, EXIT_SPEC, RunnerError, SpecError, exit_code_for

SET_HELP = "Override a spec value: --set model.temperature=0.2 (repeatable)."


def _fail(exc: BaseException, debug: bool, secrets: set[str] | None = None) -> NoReturn:
    from .redact import env_secrets, redact_text

    if debug:
        import traceback

        traceback.print_exception(exc)
    text = exc.render() if isinstance(exc, SpecError) else f"error: {exc}"
    click.echo(redact_text(text, (secrets or set()) | env_secrets()), err=True)
    raise SystemExit(exit_code_for(exc) if isinstance(exc, RunnerError) else EXIT_FAILED)


def _overrides(sets: tuple[str, ...], model: str | None) -> list[str]:
    return [*sets, *([f"model.id={model}"] if model else [])]


def _load(spec_path: str, sets: tuple[str, ...], model: str | None, debug: bool) -> Any:
    from .spec import load_spec

    try:
        return load_spec(spec_path, _overrides(sets, model))
    except RunnerError as exc:
        _fail(exc, debug)


spec_argument = click.argument("spec", type=click.Path(dir_okay=False))
set_option = click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
model_option = click.option("--model", "-m", help="Short for --set model.id=MODEL.")
debug_option = click.option("--debug", is_flag=True, help="Show tracebacks.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="yaml-agent-runner")
def cli() -> None:
    """Run AI agents declared in YAML.

    \b
    Exit codes: 0 finished, 1 run failed (model or tool error), 2 spec or usage error,
    3 a limit or budget was reached, 130 interrupted.
    """


@cli.command()
@spec_argument
@click.argument("input", required=False)
@click.option("--input", "-i", "inputs", multiple=True, metavar="NAME=VALUE",
              help="A named input (for chains); repeatable.")
@set_option
@model_option
@click.option("--session", "-s", help="Continue this conversation (memory kept in .runner/).")
@click.option("--json", "as_json", is_flag=True, help="Print the run result as one JSON object.")
@click.option("--quiet", "-q", is_flag=True, help="Do not show steps on stderr.")
@debug_option
def run(spec: str, input: str | None, inputs: tuple[str, ...], sets: tuple[str, ...],
        model: str | None, session: str | None, as_json: bool, quiet: bool, debug: bool) -> None:
    """Run SPEC on INPUT; the answer goes to stdout, the steps to stderr."""
    import asyncio

    from .api import make_agent
    from .events import StderrPrinter
    from .redact import env_secrets, redact_text, redact_value

    loaded = _load(spec, sets, model, debug)
    secrets = loaded.source.secrets | env_secrets()
    value: Any = input
    if inputs:
        named = dict(_pair(i) for i in inputs)
        value = named if input is None else {**named, "input": input}
    if value is None:
        if sys.stdin.isatty():
            raise click.UsageError("give the INPUT (or --input NAME=VALUE, or pipe it on stdin)")
        value = sys.stdin.read()
    printer = StderrPrinter(quiet=quiet or as_json, redact=lambda t: redact_text(t, secrets))
    try:
        agent = make_agent(loaded, session=session, sinks=[printer])
        result = asyncio.run(_run_once(agent, value))
    except RunnerError as exc:
        _fail(exc, debug, secrets)
    if as_json:
        click.echo(json.dumps(redact_value(result.to_dict(), secrets), ensure_ascii=False,
                              default=str))
    elif result.ok:
        answer = result.answer if isinstance(result.answer, str) else json.dumps(
            result.answer, ensure_ascii=False)
        click.echo(redact_text(answer, secrets))
    if not result.ok:
        if debug and result.exception is not None:
            import traceback

            traceback.print_exception(result.exception)
        if not as_json:
            click.echo(redact_text(f"{result.status}: {result.error}", secrets), err=True)
        raise SystemExit(exit_code_for(result.exception) if result.exception else EXIT_FAILED)


async def _run_once(agent: Any, value: Any) -> Any:
    try:
        return await agent.run(value)
    finally:
        await agent.memory.close()


def _pair(item: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep or not name:
        raise click.BadParameter(f"{item!r}: expected NAME=VALUE", param_hint="--input")
    return name, value


@cli.command()
@spec_argument
@click.option("--session", "-s", default="default", show_default=True,
              help="The conversation to continue; kept in .runner/memory.db.")
@set_option
@model_option
@debug_option
def chat(spec: str, session: str, sets: tuple[str, ...], model: str | None, debug: bool) -> None:
    """Talk to SPEC interactively; quit with Ctrl-D or /exit. Memory persists per session."""
    import asyncio

    from .api import make_agent
    from .events import StderrPrinter
    from .redact import env_secrets, redact_text

    loaded = _load(spec, sets, model, debug)
    secrets = loaded.source.secrets | env_secrets()
    agent = make_agent(loaded, session=session,
                       sinks=[StderrPrinter(redact=lambda t: redact_text(t, secrets))])

    async def repl() -> None:
        history = await agent.memory.load(session)
        if history:
            click.echo(f"(continuing session {session!r}: {len(history)} earlier messages)",
                       err=True)
        try:
            while True:
                try:
                    line = await asyncio.to_thread(input, "you> ")
                except EOFError:
                    break
                if line.strip() in ("/exit", "/quit"):
                    break
                if not line.strip():
                    continue
                result = await agent.run(line)
                text = result.answer if result.ok else f"[{result.status}] {result.error}"
                click.echo(redact_text(f"{loaded.name}> {text}", secrets))
        finally:
            await agent.memory.close()

    try:
        asyncio.run(repl())
    except RunnerError as exc:
        _fail(exc, debug, secrets)


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
def validate(paths: tuple[str, ...]) -> None:
    """Check every spec under PATHS: one line per problem, `path:line:col: key: reason`."""
    from .spec import validate_paths

    try:
        count, problems = validate_paths(paths)
    except RunnerError as exc:
        _fail(exc, False)
    for p in problems:
        click.echo(p.render())
    click.echo(f"{count} spec{'s' if count != 1 else ''} checked, {len(problems)} "
               f"problem{'s' if len(problems) != 1 else ''}", err=True)
    raise SystemExit(EXIT_SPEC if problems else EXIT_OK)


@cli.command()
def schema() -> None:
    """Print the JSON Schema of the spec (for editors: yaml-language-server)."""
    from .spec import json_schema

    click.echo(json.dumps(json_schema(), indent=2))


@cli.command()
@spec_argument
@set_option
@model_option
@debug_option
def explain(spec: str, sets: tuple[str, ...], model: str | None, debug: bool) -> None:
    """Print SPEC fully resolved (extends, ${VAR} and --set applied), secrets masked."""
    from .spec import explain as explain_spec

    loaded = _load(spec, sets, model, debug)
    click.echo(f"# {loaded.source.path} (root {loaded.source.root})")
    click.echo(explain_spec(loaded), nl=False)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def plugins(as_json: bool) -> None:
    """List installed plugins and the tools, models and memory backends each provides."""
    from .plugins import registry

    try:
        reg = registry()
    except RunnerError as exc:
        _fail(exc, False)
    rows: dict[str, dict[str, Any]] = {name: {"origin": origin, "tools": [], "models": [],
                                              "memory": []} for name, origin in reg.plugins.items()}
    for kind, table in (("tools", reg.tools), ("models", reg.models), ("memory", reg.memory)):
        for name, r in sorted(table.items()):
            rows.setdefault(r.plugin, {"origin": r.origin, "tools": [], "models": [],
                                       "memory": []})[kind].append(name)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for name, row in rows.items():
        click.echo(f"{name}  ({row['origin']})")
        for kind in ("tools", "models", "memory"):
            if row[kind]:
                label = {"models": "model providers", "memory": "memory backends"}.get(kind, kind)
                click.echo(f"  {label}: {', '.join(row[kind])}")


def main() -> None:
    """Entry point: run the CLI, flush, and exit without waiting for interpreter teardown."""
    code = EXIT_OK
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        code = 130
    except KeyboardInterrupt:
        code = 130
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_FAILED)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skips ~1 s of interpreter teardown once LiteLLM is loaded
