"""The command line's conventions, apart from its commands: usage errors as one line with exit status 2
(like every other bad input), ``-h`` beside ``--help`` without a type label, and ``--version``."""

from __future__ import annotations

import typer

__all__ = ["Command", "OneLineErrors", "print_version"]


class OneLineErrors(typer.core.TyperGroup):
    """Usage errors (an unknown option, a value of the wrong type) as one line and exit 2, like every
    other bad input, instead of click's boxed usage text."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        import sys

        try:  # typer >= 0.20 vendors click as typer._click; older ones use click itself
            from typer._click.exceptions import ClickException, NoArgsIsHelpError
        except ImportError:
            from click.exceptions import ClickException, NoArgsIsHelpError
        from typer.exceptions import Abort

        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except NoArgsIsHelpError as error:
            typer.echo(error.ctx.get_help() if error.ctx is not None else str(error))
            sys.exit(0)
        except ClickException as error:
            message = " ".join(error.format_message().split())
            command = getattr(getattr(error, "ctx", None), "command_path", None) or "moelens"
            typer.echo(f"moelens: error: {message} (see `{command} -h`)", err=True)
            sys.exit(error.exit_code)
        except Abort:
            typer.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def _plain_help(option):
    """The help flag without a type label (a person writes ``-h, --help``, not ``<bool>``)."""
    if option is not None:
        option.metavar = ""
    return option


class Command(typer.core.TyperCommand):
    def get_help_option(self, ctx):
        return _plain_help(super().get_help_option(ctx))


OneLineErrors.get_help_option = lambda self, ctx: _plain_help(typer.core.TyperGroup.get_help_option(self, ctx))


def print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"moelens {version('moelens')}")
        raise typer.Exit()
