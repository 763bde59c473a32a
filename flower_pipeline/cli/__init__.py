"""The command line: `main.py` parses and prints, `launch.py` runs the project's jobs, `study.py` runs studies."""

from flower_pipeline.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
