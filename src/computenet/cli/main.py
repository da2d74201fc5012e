"""``cnet``: the computenet command line."""

from __future__ import annotations

import inspect
import sys
from typing import Annotated

import typer
from pydantic import ValidationError

from computenet import __version__
from computenet.cli import admin, daemons, federation, jobs, transfer
from computenet.cli.output import CLIError, fail, friendly
from computenet.cli.session import current
from computenet.sdk.client import ApiError

try:  # typer carries its own copy of click in later versions
    from typer._click import exceptions as usage
except ImportError:  # pragma: no cover - an older typer, on click itself
    from click import exceptions as usage  # type: ignore[no-redef]

app = typer.Typer(
    help="computenet: query, discover and call computing power.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback(invoke_without_command=True)
def _global(
    ctx: typer.Context,
    url: Annotated[str | None, typer.Option(envvar="CNET_URL", help="node URL")] = None,
    token: Annotated[str | None, typer.Option(envvar="CNET_TOKEN", help="API token")] = None,
    version: Annotated[bool, typer.Option("--version", help="print the version")] = False,
) -> None:
    if version:
        print(__version__)
        raise typer.Exit()
    if ctx.invoked_subcommand is None:
        print(ctx.get_help())
        raise typer.Exit(2)
    current.url, current.token = url, token


app.command()(daemons.up)
app.command()(admin.status)
app.command()(admin.resources)
app.command()(admin.find)
app.command(context_settings={"allow_interspersed_args": False})(jobs.run)
app.command()(jobs.submit)
app.command()(jobs.ps)
app.command()(jobs.logs)
app.command()(jobs.show)
app.command()(jobs.cancel)
app.command()(transfer.cp)
app.command()(transfer.ls)
app.command()(transfer.rm)
app.command()(admin.schema)
app.command()(admin.catalog)
app.add_typer(admin.token_app, name="token")
app.add_typer(admin.tenant_app, name="tenant")
app.add_typer(admin.pool_app, name="pool")
app.add_typer(transfer.dataset_app, name="dataset")
app.command()(federation.resolve)
daemons.node_app.command("init")(federation.node_init)
daemons.node_app.command("join")(federation.node_join)
daemons.node_app.command("invite")(federation.node_invite)
daemons.node_app.command("tree")(federation.node_tree)
app.add_typer(daemons.node_app, name="node")
app.add_typer(daemons.agent_app, name="agent")


def _unwrapped(doc: str) -> str:
    """A docstring's paragraphs each on one line: the help's own layout wraps them to
    the terminal, where the source's line breaks would break a line midway."""
    paras = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(" ".join(p.split()) for p in paras)


def _reflow(group: typer.Typer) -> None:
    for info in group.registered_commands:
        if info.help is None and info.callback is not None and info.callback.__doc__:
            info.help = _unwrapped(info.callback.__doc__)
    for sub in group.registered_groups:
        if sub.typer_instance is not None:
            _reflow(sub.typer_instance)


_reflow(app)


def main() -> None:
    try:
        code = app(standalone_mode=False, prog_name="cnet")
    except usage.NoArgsIsHelpError as e:  # a group named alone: its help
        print(e.format_message())
        sys.exit(2)
    except usage.UsageError as e:  # a bad option or argument: one line, as any error
        hint = f" (see {e.ctx.command_path} --help)" if e.ctx is not None else ""
        fail(e.format_message().replace("Value error, ", "").rstrip(".") + hint, 2)
    except usage.ClickException as e:
        fail(e.format_message(), e.exit_code)
    except typer.Abort:  # Ctrl-C where the command did not catch it
        sys.exit(130)
    except ApiError as e:
        fail(str(e), 1)
    except CLIError as e:
        fail(str(e), e.code)
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "input"
        fail(f"{field}: {friendly(first)}", 2)
    except KeyboardInterrupt:
        sys.exit(130)
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()
