"""The command line. Heavy imports (pydantic models, LiteLLM, llama.cpp) happen inside the
commands that need them, so `runner --help` starts fast."""

from __future__ import annotations

import errno
import json
import os
import stat
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from .errors import EXIT_FAILED, EXIT_OK, EXIT_SPEC, RunnerError, SpecError, exit_code_for

SET_HELP = "Override a spec value: --set model.temperature=0.2 (repeatable)."


def _fail(exc: BaseException, debug: bool, secrets: set[str] | None = None) -> NoReturn:
    from .redact import env_secrets, printable, redact_text

    if debug:
        import traceback

        traceback.print_exception(exc)
    text = exc.render() if isinstance(exc, SpecError) else f"error: {exc}"
    click.echo(printable(redact_text(text, (secrets or set()) | env_secrets())), err=True)
    raise SystemExit(exit_code_for(exc) if isinstance(exc, RunnerError) else EXIT_FAILED)


def _overrides(sets: tuple[str, ...], model: str | None) -> list[str]:
    return [*sets, *([f"model.id={model}"] if model else [])]


def _load(spec_path: str, sets: tuple[str, ...], model: str | None, debug: bool,
          resolved: bool = True) -> Any:
    """The spec (checked against the installed plugins unless `resolved` is False), or exit 2."""
    from .spec import load_spec

    try:
        spec = load_spec(spec_path, _overrides(sets, model))
        if not resolved:
            return spec
        from .resolve import resolve

        return resolve(spec)
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
    Exit codes: 0 finished, 1 run failed (model, tool or output error), 2 spec or usage
    error, 3 a limit or budget was reached, 130 interrupted by SIGINT, 143 by SIGTERM.
    """


json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print the run result as one JSON object.")
quiet_option = click.option("--quiet", "-q", is_flag=True, help="Do not show steps on stderr.")
yes_option = click.option("--yes", "-y", is_flag=True,
                          help="Approve tools marked confirm without asking.")


@cli.command()
@spec_argument
@click.argument("input", required=False)
@click.option("--input", "-i", "inputs", multiple=True, metavar="NAME=VALUE",
              help="A named input (for chains); repeatable.")
@set_option
@model_option
@click.option("--session", "-s", help="Continue this conversation (memory kept in .runner/).")
@click.option("--record", type=click.Path(dir_okay=False), metavar="FILE",
              help="Save every model exchange of the run to FILE (JSON lines).")
@click.option("--replay", type=click.Path(dir_okay=False, exists=True), metavar="FILE",
              help="Answer from the exchanges recorded in FILE instead of calling the model.")
@yes_option
@json_option
@quiet_option
@debug_option
def run(spec: str, input: str | None, inputs: tuple[str, ...], sets: tuple[str, ...],
        model: str | None, session: str | None, record: str | None, replay: str | None,
        yes: bool, as_json: bool, quiet: bool, debug: bool) -> None:
    """Run SPEC on INPUT; the answer goes to stdout, the steps to stderr.

    Each step is checkpointed in .runner/runs.db: Ctrl-C (or SIGTERM) stops at the next step
    boundary, and `runner resume RUN_ID` continues the run. Each run's trace goes to
    .runner/traces/ (see `runner trace`)."""
    from .api import drive, make_agent, model_tap, resume_hint
    from .console import printer, report, terminal_approver
    from .redact import env_secrets

    if record and replay:
        raise click.UsageError("--record and --replay cannot be used together")
    loaded = _load(spec, (*sets, *(["loop.approve=always"] if yes else [])), model, debug)
    secrets = loaded.spec.source.secrets | env_secrets()
    value: Any = input
    if inputs:
        named = dict(_pair(i) for i in inputs)
        value = named if input is None else {**named, "input": input}
    if value is None:
        if sys.stdin.isatty():
            raise click.UsageError("give the INPUT (or --input NAME=VALUE, or pipe it on stdin)")
        value = sys.stdin.read()
    tap = None
    try:
        tap = model_tap(loaded.spec, secrets, record, replay)
        agent = make_agent(loaded, session=session, sinks=[printer(quiet or as_json, secrets)],
                           approver=terminal_approver(), tap=tap)
        result = drive(agent, lambda: agent.start(value), _stopping)
    except RunnerError as exc:
        _fail(exc, debug, secrets)
    finally:
        if tap is not None:
            tap.close()
    report(result, as_json, debug, secrets, resume_hint(agent, result))


@cli.command()
@click.argument("run_id")
@click.option("--db", default=".runner/runs.db", show_default=True,
              help="Checkpoint database: a SQLite file, or a redis:// URL.")
@click.option("--force", is_flag=True, help="Resume even though the spec changed since.")
@yes_option
@json_option
@quiet_option
@debug_option
def resume(run_id: str, db: str, force: bool, yes: bool, as_json: bool, quiet: bool,
           debug: bool) -> None:
    """Continue an interrupted run from its last committed step (finished steps are not
    repeated; a tool marked idempotent: false that was in flight is not re-run)."""
    from .api import drive, prepare_resume, resume_hint
    from .console import printer, report, terminal_approver
    from .redact import env_secrets

    secrets = env_secrets()
    approver = _yes if yes else terminal_approver()
    try:
        agent, state = prepare_resume(run_id, db=db, force=force, approver=approver,
                                      sinks=[printer(quiet or as_json, secrets)])
        result = drive(agent, lambda: agent.restore(state), _stopping)
    except RunnerError as exc:
        _fail(exc, debug, secrets)
    report(result, as_json, debug, agent.spec.source.secrets | secrets,
            resume_hint(agent, result))


@cli.command()
@click.option("--db", default=".runner/runs.db", show_default=True,
              help="Checkpoint database: a SQLite file, or a redis:// URL.")
@click.option("--limit", "-n", default=20, show_default=True, help="How many runs.")
@json_option
def runs(db: str, limit: int, as_json: bool) -> None:
    """List recent runs: id, agent, status, steps, tokens, last update."""
    import time

    from .checkpoints import is_remote, store_at
    from .redact import printable

    if not is_remote(db) and not os.path.exists(db):
        click.echo(f"no runs yet ({db} does not exist)", err=True)
        return
    from .result import to_json

    try:
        rows = store_at(db).list(limit)
    except RunnerError as exc:
        _fail(exc, False)
    if as_json:
        click.echo(to_json(rows, indent=2))
        return
    click.echo(f"{'RUN':<14}{'AGENT':<16}{'STATUS':<18}{'STEPS':>5}{'TOKENS':>9}  UPDATED")
    for r in rows:
        b = r["budget"]
        tokens = b.get("prompt_tokens", 0) + b.get("completion_tokens", 0)
        when = "-" if r["updated"] is None else time.strftime(
            "%Y-%m-%d %H:%M:%S", time.localtime(r["updated"]))
        line = (f"{r['run_id']:<14}{r['agent'][:15]:<16}{r['status'][:17]:<18}"
                f"{r['steps']:>5}{tokens:>9}  {when}")
        click.echo(printable(line + (f"  {r['error']}" if "error" in r else "")))


def _session_store(spec: str | None, sets: tuple[str, ...], debug: bool) -> Any:
    """The memory `runner sessions` reads: where `runner run SPEC --session` keeps them
    (without SPEC: .runner/memory.db, where specs without a persistent backend keep them)."""
    from .api import session_memory
    from .memory import SQLiteMemory

    if spec is None:
        return SQLiteMemory(".runner/memory.db")
    resolved = _load(spec, sets, None, debug)
    return session_memory(resolved) or resolved.memory()


def _with_store(spec: str | None, sets: tuple[str, ...], debug: bool, op: Any) -> Any:
    import asyncio

    async def go() -> Any:
        store = _session_store(spec, sets, debug)
        try:
            if not hasattr(store, "sessions"):
                raise SpecError("this memory backend cannot list its sessions")
            return await op(store)
        finally:
            await store.close()

    try:
        return asyncio.run(go())
    except RunnerError as exc:
        _fail(exc, debug)


sessions_spec = click.option("--spec", "spec", type=click.Path(dir_okay=False, exists=True),
                             help="Use this spec's memory backend (default: .runner/memory.db).")


@cli.group(invoke_without_command=True)
@sessions_spec
@set_option
@json_option
@debug_option
@click.pass_context
def sessions(ctx: click.Context, spec: str | None, sets: tuple[str, ...], as_json: bool,
             debug: bool) -> None:
    """List conversations kept in memory: name, messages, last use (`show NAME`, `rm NAME`)."""
    import time

    from .redact import printable
    from .result import to_json

    ctx.obj = (spec, sets, debug)
    if ctx.invoked_subcommand is not None:
        return
    from .summary import SUMMARY_SUFFIX

    rows = [r for r in _with_store(spec, sets, debug, lambda store: store.sessions())
            if SUMMARY_SUFFIX not in r["session"]]  # a session's summary goes with it
    if as_json:
        click.echo(to_json(rows, indent=2))
        return
    if not rows:
        click.echo("no sessions", err=True)
        return
    click.echo(f"{'SESSION':<32}{'MESSAGES':>9}  LAST USED")
    for r in rows:
        when = "-" if r["last_used"] is None else time.strftime(
            "%Y-%m-%d %H:%M:%S", time.localtime(r["last_used"]))
        click.echo(printable(f"{r['session'][:31]:<32}{r['messages']:>9}  {when}"))


@sessions.command("show")
@click.argument("name")
@json_option
@click.pass_obj
def sessions_show(obj: Any, name: str, as_json: bool) -> None:
    """Print one conversation, oldest message first."""
    from .redact import printable
    from .result import to_json

    spec, sets, debug = obj
    messages = _with_store(spec, sets, debug, lambda store: store.load(name))
    if not messages:
        _fail(SpecError(f"no session {name!r} (see `runner sessions`)"), debug)
    if as_json:
        click.echo(to_json(messages, indent=2))
        return
    for m in messages:
        click.echo(printable(f"{m['role']}: {m['content']}"))


@sessions.command("rm")
@click.argument("name")
@click.pass_obj
def sessions_rm(obj: Any, name: str) -> None:
    """Delete one conversation."""
    spec, sets, debug = obj

    async def drop(store: Any) -> int:
        from .summary import SUMMARY_SUFFIX

        count = len(await store.load(name))
        await store.clear(name)
        await store.clear(name + SUMMARY_SUFFIX)
        return count

    count = _with_store(spec, sets, debug, drop)
    if not count:
        _fail(SpecError(f"no session {name!r} (see `runner sessions`)"), debug)
    click.echo(f"deleted session {name!r} ({count} messages)", err=True)


def _stopping(run: Any, signum: int) -> None:
    import signal

    click.echo(f"\n{signal.Signals(signum).name}: stopping after this step "
               f"(Ctrl-C again to quit now); run {run.run_id} can be resumed", err=True)


async def _yes(tool: str, args: dict[str, Any]) -> bool:
    return True


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
    from .console import StderrPrinter
    from .redact import env_secrets, printable, redact_text

    loaded = _load(spec, sets, model, debug)
    secrets = loaded.spec.source.secrets | env_secrets()
    agent = make_agent(loaded, session=session,
                       sinks=[StderrPrinter(redact=lambda t: redact_text(t, secrets))])

    async def repl() -> None:
        try:
            history = await agent.memory.load(session)
            if history:
                click.echo(f"(continuing session {session!r}: {len(history)} earlier "
                           f"messages)", err=True)
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
                click.echo(printable(redact_text(f"{loaded.spec.name}> {text}", secrets)))
        finally:
            await agent.close()

    try:
        asyncio.run(repl())
    except RunnerError as exc:
        _fail(exc, debug, secrets)


@cli.command("mcp")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--http", "address", metavar="HOST:PORT",
              help="Serve streamable HTTP at http://HOST:PORT/mcp instead of stdio; beyond "
                   "loopback it requires the bearer token in $RUNNER_MCP_TOKEN.")
@set_option
@model_option
@debug_option
def mcp_command(paths: tuple[str, ...], address: str | None, sets: tuple[str, ...],
                model: str | None, debug: bool) -> None:
    """Serve every agent spec under PATHS as an MCP tool (stdio unless --http): its
    description, its input (a chain's named inputs) as arguments, each step as progress.

    \b
    An MCP client's config needs one line, e.g. Claude Desktop's mcpServers:
      "agents": {"command": "runner", "args": ["mcp", "/path/to/agents"]}
    """
    import asyncio

    from .serve import mcp as served_mcp
    from .spec import find_root

    # an MCP client starts this from anywhere: the runs' state (.runner/: traces,
    # checkpoints, memory) goes to the project of the served folder, not that directory
    targets = [Path(p).resolve() for p in paths]
    first = targets[0] / "_" if targets[0].is_dir() else targets[0]
    os.chdir(find_root(first))
    try:
        host_port = served_mcp.parse_address(address) if address else None
        token = os.environ.get(served_mcp.TOKEN_ENV) or None
        if host_port and not served_mcp.is_loopback(host_port[0]) and not token:
            raise SpecError(f"--http {address} listens beyond loopback: set "
                            f"${served_mcp.TOKEN_ENV} to the bearer token clients must send")
        served = served_mcp.load_agents(targets, _overrides(sets, model), qualify=".")
    except RunnerError as exc:
        _fail(exc, debug)
    names = ", ".join(s.name for s in served)
    if host_port:
        click.echo(f"serving {names} at http://{host_port[0]}:{host_port[1]}/mcp", err=True)
        asyncio.run(served_mcp.serve_http(served, *host_port, token))
    else:
        click.echo(f"serving {names} over stdio", err=True)
        asyncio.run(served_mcp.serve_stdio(served))


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; beyond loopback $RUNNER_SERVE_TOKEN is required.")
@click.option("--port", "-p", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--max-runs", default=64, show_default=True, type=click.IntRange(1, 100_000),
              help="Runs at once; more requests wait their turn, up to as many again queued.")
@click.option("--max-request-bytes", default=1_000_000, show_default=True,
              type=click.IntRange(1024, 1 << 30), help="Largest request body accepted.")
@click.option("--max-run-tokens", type=click.IntRange(1), metavar="N",
              help="Cap on any run's token budget (a spec's own budget may be lower).")
@click.option("--max-run-seconds", type=click.FloatRange(min=0.001), metavar="S",
              help="Cap on any run's wall-clock budget.")
@click.option("--grace", "grace_s", default=30.0, show_default=True,
              type=click.FloatRange(min=0),
              help="On SIGTERM, seconds runs in flight get to finish before they are "
                   "stopped and checkpointed.")
@set_option
@model_option
@debug_option
def serve(paths: tuple[str, ...], host: str, port: int, max_runs: int, max_request_bytes: int,
          max_run_tokens: int | None, max_run_seconds: float | None, grace_s: float,
          sets: tuple[str, ...], model: str | None, debug: bool) -> None:
    """Serve every agent spec under PATHS over HTTP: a runs API (/v1/agents/NAME/runs,
    /v1/runs/ID) and the OpenAI chat completions API, the agent's name as the model id.

    \b
      runner serve agents/ --port 8000
      curl localhost:8000/v1/agents/calculator/runs -d '{"input": "What is 17 times 23?"}'
    """
    from .serve.http import Limits, serve_main

    limits = Limits(max_runs=max_runs, max_request_bytes=max_request_bytes,
                    max_run_tokens=max_run_tokens, max_run_seconds=max_run_seconds,
                    grace_s=grace_s)
    try:
        serve_main([Path(p) for p in paths], host, port, limits, _overrides(sets, model))
    except RunnerError as exc:
        _fail(exc, debug)


# --- runner batch (owned by the batch engine's author) ---
@cli.command()
@spec_argument
@click.argument("inputs", type=click.Path(dir_okay=False, exists=True))
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False),
              help="Results file (JSON lines); rerunning with the same file skips what is done.")
@click.option("--concurrency", "-c", default=16, show_default=True,
              type=click.IntRange(1, 100_000), help="Runs at once (per worker with --engine ray).")
@click.option("--rate", metavar="N/min", help="Start at most N runs a minute (provider limits).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local",
              show_default=True, help="Run in this process, or across a Ray cluster.")
@click.option("--address", metavar="ADDR",
              help="Ray cluster to join (default: $RAY_ADDRESS, else a local one).")
@set_option
@model_option
@quiet_option
@debug_option
def batch(spec: str, inputs: str, out: str, concurrency: int, rate: str | None, engine: str,
          address: str | None, sets: tuple[str, ...], model: str | None, quiet: bool,
          debug: bool) -> None:
    """Run SPEC once for each line of INPUTS (JSON lines: {"id": ..., "input": ...}), writing
    one result line per input to --out; a progress bar and a summary go to stderr."""
    from .serve.batch import batch_main

    try:
        code = batch_main(spec, inputs, out, concurrency=concurrency, rate=rate, engine=engine,
                          address=address, overrides=_overrides(sets, model), quiet=quiet)
    except RunnerError as exc:
        _fail(exc, debug)
    raise SystemExit(code)
# --- end of runner batch ---


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
def validate(paths: tuple[str, ...]) -> None:
    """Check every spec under PATHS: one line per problem, `path:line:col: key: reason`."""
    from .api import validate_paths

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
    """Print SPEC as loaded (extends, ${VAR} and --set applied), secrets masked."""
    from .spec import explain as explain_spec

    loaded = _load(spec, sets, model, debug, resolved=False)
    click.echo(f"# {loaded.source.path} (root {loaded.source.root})")
    click.echo(explain_spec(loaded), nl=False)


@cli.command()
@spec_argument
@set_option
@model_option
@debug_option
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.option("--lock", is_flag=True, help="Record every MCP tool definition in a lock file "
              "next to SPEC; a server whose tools change later is refused.")
def tools(spec: str, sets: tuple[str, ...], model: str | None, debug: bool,
          as_json: bool, lock: bool) -> None:
    """List the tools SPEC's agent will see, exactly as the model gets them: name, where each
    comes from, description, argument schema (native calls) and input hint (text ReAct). An
    MCP tool shows its server, its own name, hints and full description: read them before
    trusting a server (a description is an instruction the model reads)."""
    import asyncio

    from .agent import Agent
    from .plugins import registry
    from .redact import json_printable, printable
    from .spec import shown_path
    from .spec._yaml import format_path

    resolved = _load(spec, sets, model, debug)
    try:
        # models are built lazily: none is loaded; MCP servers start, and list their tools
        agent = Agent(resolved, checkpoints=False, tool_lock=not lock)
        reg = registry()
    except RunnerError as exc:
        _fail(exc, debug, resolved.spec.source.secrets)
    try:
        rows = []
        for name, t in agent.tools.items():
            ref = agent.tool_entries.get(name)
            if ref is None:  # a handoff's tool: its entry is in handoffs:
                i = list(agent.handoffs).index(name)
                origin, entry = "built-in", f"handoffs[{i}]: {resolved.spec.handoffs[i]}"
            else:
                registered = reg.tools.get(ref.name)
                origin = ("built-in" if registered is None or registered.origin == "built-in"
                          else f"plugin {registered.plugin} ({registered.origin})")
                entry = f"{format_path(ref.key[:2])}: {ref.name}"  # tools[i]: its registered name
            row = {"name": name, "from": origin, "entry": entry,
                   "description": t.description, "input_hint": t.input_hint(),
                   "parameters": t.schema()["function"]["parameters"]}
            if "server" in t.meta:
                row["mcp"] = {k: t.meta[k] for k in ("server", "server_tool", "transport",
                                                     "annotations", "hash", "description")}
            rows.append(row)
        if lock:
            from .default_plugins.mcp import write_lock

            path = write_lock(resolved.spec.source.path, list(agent.tools.values()))
    finally:
        asyncio.run(agent.close())
    # what a server says reaches the terminal with its control codes shown, never obeyed
    if as_json:
        click.echo(json_printable(json.dumps(rows, indent=2, ensure_ascii=False)))
    else:
        for r in rows:
            click.echo(printable(f"{r['name']}  ({r['from']}; {r['entry']})"))
            m = r.get("mcp")
            if m is not None:
                click.echo(printable(
                    f"  MCP server {m['server']} ({m['transport']}), its tool "
                    f"{m['server_tool']!r}" + (f", hints {json.dumps(m['annotations'])}"
                                               if m["annotations"] else "")))
                click.echo("  description, in full, as the server gives it:")
                for line in (m["description"] or "(none)").splitlines() or [""]:
                    click.echo(printable(f"    {line}"))
            else:
                click.echo(printable(f"  {r['description']}"))
            click.echo(printable(f"  input: {r['input_hint']}"))
            click.echo("  parameters: " + json_printable(json.dumps(r["parameters"],
                                                                    ensure_ascii=False)))
    if lock:
        servers = {r["mcp"]["server"] for r in rows if "mcp" in r}
        click.echo(f"locked {sum('mcp' in r for r in rows)} tools of {len(servers)} MCP "
                   f"server(s) in {shown_path(path)}", err=True)


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
    families: dict[str, dict[str, list[str]]] = {}  # plugin -> family -> its prefixes
    for prefix, r in reg.models.items():
        if r.family:
            families.setdefault(r.plugin, {}).setdefault(r.family, []).append(prefix)
    for name, row in rows.items():
        click.echo(f"{name}  ({row['origin']})")
        own = families.get(name, {})
        hidden = {p for prefixes in own.values() for p in prefixes}
        models = [p or "(bare model ids)" for p in row["models"] if p not in hidden]
        for family, prefixes in own.items():
            named = [p for p in prefixes if p]
            bare = " and bare model ids" if "" in prefixes else ""
            models.append(f"every {family} provider ({len(named)} prefixes: "
                          f"{', '.join(named[:4])}, ...){bare}")
        for label, names in (("tools", row["tools"]), ("model providers", models),
                             ("memory backends", row["memory"])):
            if names:
                click.echo(f"  {label}: {', '.join(names)}")


TRACE_DIR = ".runner/traces"
trace_dir_option = click.option("--dir", "folder", default=TRACE_DIR, show_default=True,
                                help="Folder of the trace files (the spec's trace.path).")


@cli.group()
def trace() -> None:
    """Read the traces runs leave in .runner/traces/: list, show, view."""


@trace.command("list")
@trace_dir_option
@click.option("--limit", "-n", default=20, show_default=True, help="How many runs.")
@json_option
def trace_list(folder: str, limit: int, as_json: bool) -> None:
    """Recent runs, newest first: status, agent, steps, tokens, cost, duration."""
    from .result import to_json
    from .trace.reader import list_traces

    rows = list_traces(folder, limit)
    if as_json:
        click.echo(to_json(rows, indent=2))
        return
    if not rows:
        click.echo(f"no traces in {folder}", err=True)
        return
    from .trace.show import run_table

    click.echo(run_table(rows))


def _load_trace(folder: str, run_id: str) -> tuple[Any, dict[str, Any]]:
    from .trace.reader import find_trace, read_tree

    try:
        path = find_trace(folder, run_id)
        return path, read_tree(path)
    except RunnerError as exc:
        _fail(exc, False)


@trace.command("show")
@click.argument("run_id")
@trace_dir_option
@click.option("--full", is_flag=True, help="Show whole prompts, replies and tool outputs.")
def trace_show(run_id: str, folder: str, full: bool) -> None:
    """RUN_ID as a timeline on the terminal, sub-agents and retries nested (a prefix of the
    id is enough)."""
    from .trace.show import print_run

    _, tree = _load_trace(folder, run_id)
    print_run(tree, full=full)


@trace.command("view")
@click.argument("run_id")
@trace_dir_option
@click.option("--output", "-o", type=click.Path(dir_okay=False),
              help="Where to write the page (default: next to the trace, RUN_ID.html).")
def trace_view(run_id: str, folder: str, output: str | None) -> None:
    """Write RUN_ID as one self-contained HTML page (no network) and print its path: a
    timeline of model and tool calls to scale, each step expandable to the exact prompt
    and raw reply."""
    from pathlib import Path

    from .trace.html import render_page

    path, tree = _load_trace(folder, run_id)
    out = Path(output) if output else path.with_suffix(".html")
    page = render_page(tree).encode("utf-8")
    # private, as the trace it shows (a page written before is made so too). The default
    # page sits beside a trace that may have come with the repository: a symlink there is
    # refused, never followed (it could point at any file the user can write)
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(out, flags | (0 if output else os.O_NOFOLLOW), 0o600)
        with os.fdopen(fd, "wb") as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(0, "not a regular file")
            os.ftruncate(fd, 0)
            if st.st_uid == os.getuid():
                os.fchmod(fd, 0o600)
            f.write(page)
    except OSError as exc:
        reason = "a symlink, not followed" if exc.errno == errno.ELOOP else exc.strerror or exc
        _fail(RunnerError(f"cannot write {out}: {reason}"), False)
    click.echo(str(out))


@cli.command("test")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--record", is_flag=True,
              help="Run on the live model and (re)write each test file's recording.")
@click.option("--live", is_flag=True, help="Run on the live model; ignore recordings.")
@set_option
@model_option
@click.option("--verbose", "-v", is_flag=True, help="Show each case's steps.")
def test_command(paths: tuple[str, ...], record: bool, live: bool, sets: tuple[str, ...],
                 model: str | None, verbose: bool) -> None:
    """Run the YAML agent tests under PATHS (*.test.yaml): each case's input, and what is
    expected of the answer, the tools called, the steps and the status. Prints
    `N passed, N failed`; exits 1 if any failed, 2 on a bad test file."""
    from .testing.cases import run_tests

    if record and live:
        raise click.UsageError("--record already runs live; give one of them")
    raise SystemExit(run_tests(paths, record=record, live=live,
                               overrides=_overrides(sets, model), verbose=verbose))


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
    from .console import exit_now

    exit_now(code)  # skips ~1 s of interpreter teardown once LiteLLM is loaded
