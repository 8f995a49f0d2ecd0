"""The typer application, and the one place where errors become one-line messages.

Every command of :mod:`latentcube.cli` registers on :data:`app`. A user error
raised anywhere below a command (a :class:`~latentcube.errors.LatentcubeError`, a
file that cannot be read or written, an invalid YAML or configuration, an optional
package that is not installed) is printed as ``error: <one line>`` on stderr and
the command exits with code 2; an interrupted run exits with 130 and says how to
resume. Set ``LATENTCUBE_DEBUG=1`` to see the traceback instead.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Annotated, Any, NoReturn

import typer
from typer.core import TyperGroup

__all__ = ["app", "command_line", "fail", "one_line", "positive"]

#: Optional packages and the extra that installs them.
EXTRAS = {
    "statsmodels": "eval",
    "spyndex": "eval",
    "sen2nbar": "nbar",
    "dask_jobqueue": "cluster",
    "bokeh": "cluster",
    "ukis_csmask": "cloudmask",
    "onnxruntime": "cloudmask",
}


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line (pydantic and xarray messages span several)."""
    text = str(err).strip() or type(err).__name__
    if isinstance(err, OSError) and err.filename is not None and str(err.filename) not in text:
        text = f"{err.filename}: {text}"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return re.sub(r"\s+", " ", "; ".join(lines))


def _missing_extra(err: ModuleNotFoundError) -> str | None:
    name = (err.name or "").split(".")[0]
    extra = EXTRAS.get(name)
    if extra is None:
        return None
    return f"this needs the optional package {name!r}: pip install 'latentcube[{extra}]'"


def _user_errors() -> tuple[type[BaseException], ...]:
    import yaml

    from latentcube.errors import LatentcubeError

    return (LatentcubeError, OSError, ValueError, yaml.YAMLError)


def fail(msg: str) -> NoReturn:
    """Print ``error: msg`` on stderr and exit with code 2."""
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


class _Group(TyperGroup):
    """A command group that turns user errors into one line and exit code 2."""

    def invoke(self, ctx: Any) -> Any:
        if os.environ.get("LATENTCUBE_DEBUG"):
            return super().invoke(ctx)
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            typer.secho("interrupted; run the same command again to resume", fg="red", err=True)
            raise typer.Exit(code=130) from None
        except ModuleNotFoundError as err:
            msg = _missing_extra(err)
            if msg is None:
                raise
            fail(msg)
        except Exception as err:
            if isinstance(err, _user_errors()):
                fail(one_line(err))
            raise


app = typer.Typer(
    name="latentcube",
    cls=_Group,
    help=(
        "Turn Sentinel-1 and Sentinel-2 time series into embedding cubes: one small vector "
        "per 10 m pixel per cloud-free date."
    ),
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


@app.callback(invoke_without_command=True)
def _main(
    ctx: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", is_eager=True)
    ] = False,
) -> None:
    if version:
        from latentcube._version import __version__

        typer.echo(__version__)
        raise typer.Exit()
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit()


def positive(value: int | None, option: str, low: int = 1) -> None:
    """Refuse a count below ``low`` (``embed --workers 0`` would wait for ever)."""
    if value is not None and value < low:
        what = "a positive integer" if low == 1 else f"an integer of {low} or more"
        fail(f"{option.lstrip('-')} must be {what}, got {value}")


def command_line() -> str:
    """The command as typed, for reports."""
    return " ".join(["latentcube", *sys.argv[1:]])
