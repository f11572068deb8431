"""The `infer` command: serve, migrate, grant credits, and the operator's node tools."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from pydantic import ValidationError
from pydantic_settings import SettingsError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from infer.cli.errors import CommandError
from infer.cli.node_options import add_node_commands
from infer.cli.platform import add_platform_commands
from infer.config import Settings, load_settings
from infer.errors import InferError, Unavailable


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="infer", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    add_platform_commands(commands)
    add_node_commands(commands)
    return parser


def _configuration_problems(error: ValidationError) -> str:
    """Each problem named by its variable: `INFER_LOG_LEVEL: Input should be …`."""
    problems = []
    for problem in error.errors():
        message = str(problem["msg"]).removeprefix("Value error, ")
        if problem["loc"]:
            message = f"INFER_{str(problem['loc'][0]).upper()}: {message}"
        problems.append(message)
    return "; ".join(problems)


def _database_problem(settings: Settings, error: OSError | DBAPIError | Unavailable) -> str:
    """One line naming the database (without its password) and what went wrong."""
    where = make_url(settings.database_url).render_as_string(hide_password=True)
    cause = error.__cause__ if isinstance(error, Unavailable) else error
    reason = cause.orig if isinstance(cause, DBAPIError) else cause or error
    return f"cannot use the database {where}: {reason}"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace, Settings], int | None] = args.handler
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    settings: Settings | None = None
    status: int | None = None
    try:
        # Operator-side commands run on the operator's machine: no platform settings there,
        # and no development secrets file written into their working directory.
        settings = Settings.model_construct() if args.command == "node" else load_settings()
        status = handler(args, settings)
    except ValidationError as exc:
        print(f"infer: configuration error: {_configuration_problems(exc)}", file=sys.stderr)
        return 2
    except SettingsError as exc:
        print(f"infer: configuration error: {exc}", file=sys.stderr)
        return 2
    except (InferError, CommandError) as exc:
        if isinstance(exc, Unavailable) and settings is not None:
            print(f"infer: {_database_problem(settings, exc)}", file=sys.stderr)
            return 1
        print(f"infer: {exc}", file=sys.stderr)
        return 1
    except (OSError, DBAPIError) as exc:
        if args.command == "node":
            raise
        problem = exc if settings is None else _database_problem(settings, exc)
        print(f"infer: {problem}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return status or 0
