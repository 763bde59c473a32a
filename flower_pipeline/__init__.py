"""Oxford flower photos in, trained DCGAN generators out.

The modules at this level are the ML core (plain Python, NumPy, OpenCV and
PyTorch); `flower_pipeline.defs` wires them into Dagster.
"""

__version__ = "0.1.0"


def source_version() -> str:
    """The package version, plus the git commit when running from a checkout (recorded with each model)."""
    import subprocess
    from pathlib import Path

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                                capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{__version__}+{commit}" if commit else __version__
