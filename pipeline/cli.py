"""The ``newsletter`` command: a thin layer over the library; all logic lives in the modules."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

import click

from . import __version__
from .build import build_issue, check_build, write_build
from .config import Config, load_config
from .errors import CheckFailed, NewsletterError

ISSUE = click.argument("number", metavar="N", type=click.IntRange(min=1))


class _Group(click.Group):
    """Turn the editor's mistakes into one line on stderr instead of a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except NewsletterError as error:
            _fail(error)


def _fail(error: NewsletterError) -> NoReturn:
    # Paths relative to where the editor stands are shorter to read and to click.
    message = str(error).replace(f"{Path.cwd()}/", "")
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(error.exit_code)


@click.group(cls=_Group)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="NEWSLETTER_CONFIG",
    help="Config file (default: ./newsletter.toml, or $NEWSLETTER_CONFIG).",
)
@click.version_option(__version__)
@click.pass_context
def main(ctx: click.Context, config_path: Path | None) -> None:
    """Render, check, preview and publish newsletter issues."""
    ctx.obj = config_path


def _config(ctx: click.Context) -> Config:
    return load_config(ctx.obj)


def _size(size: int) -> str:
    return f"{size:>9,} bytes"


@main.command()
@ISSUE
@click.pass_context
def build(ctx: click.Context, number: int) -> None:
    """Render issue N into build/N/: email.html, email.txt, message.eml."""
    config = _config(ctx)
    result = build_issue(config, number)
    written = write_build(config, result)
    for name, path in written.items():
        click.echo(f"{_size(path.stat().st_size)}  {_relative(path)}")
    _budget_line(config, result.html_size)


@main.command()
@ISSUE
@click.pass_context
def check(ctx: click.Context, number: int) -> None:
    """Validate issue N and its config, build it, and fail on problems that would break it in an inbox."""
    config = _config(ctx)
    result = build_issue(config, number)
    problems = check_build(config, result)
    path = _relative(result.rendered.issue.path)
    for problem in problems:
        colour = "red" if problem.severity == "error" else "yellow"
        click.secho(problem.format(path), fg=colour, err=problem.severity == "error")
    errors = sum(p.severity == "error" for p in problems)
    warnings = len(problems) - errors
    _budget_line(config, result.html_size)
    links = len(result.rendered.document.links)
    summary = f"{path}: {links} links, {errors} error(s), {warnings} warning(s)"
    if errors:
        raise CheckFailed(f"{summary}: fix the errors before sending")
    click.secho(f"{summary}: ready to send", fg="green")


@main.command()
@ISSUE
@click.option("--port", default=8000, show_default=True, help="Port on 127.0.0.1 (0 picks a free one).")
@click.option("--open/--no-open", "open_browser", default=False, help="Open the page in a browser.")
@click.pass_context
def preview(ctx: click.Context, number: int, port: int, open_browser: bool) -> None:
    """Serve issue N at phone and desktop width, rebuilding when the source or a template changes."""
    from .preview import serve_preview

    serve_preview(_config(ctx), number, port=port, open_browser=open_browser)


def _budget_line(config: Config, size: int) -> None:
    share = 100 * size / config.max_html_bytes
    click.echo(f"HTML {size:,} bytes: {share:.0f}% of the {config.max_html_bytes:,}-byte budget")


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
