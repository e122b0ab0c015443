"""The command line: a thin Typer layer (parse, call one function, print, map errors)."""

from edgetrain.cli.main import app, main

__all__ = ["app", "main"]
