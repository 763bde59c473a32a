"""The core imports no Dagster: each core module imported in a fresh interpreter."""

import subprocess
import sys
from pathlib import Path

import flower_pipeline

PACKAGE = Path(flower_pipeline.__file__).parent
# The Dagster layer, the command line and the scale-out code may import Dagster; nothing else may. `definitions`
# is Dagster's entry point (workspace.yaml), the one module outside the folders.
OUTSIDE_CORE = ("defs", "cli", "scaleout", "definitions")


def core_modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[0] not in OUTSIDE_CORE:
            names.append(".".join(("flower_pipeline", *parts)).removesuffix(".__init__"))
    return names


def test_the_core_never_imports_dagster():
    """Each core module imported in a fresh interpreter; the first that brings Dagster in is named."""
    modules = core_modules()
    assert {"flower_pipeline.runs", "flower_pipeline.registry", "flower_pipeline.tracking",
            "flower_pipeline.metrics", "flower_pipeline.layout", "flower_pipeline.sources"} <= set(modules)
    script = ("import importlib, sys\n"
              f"for name in {modules!r}:\n"
              "    importlib.import_module(name)\n"
              "    if 'dagster' in sys.modules:\n"
              "        sys.exit(f'{name} imports dagster')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_arrows_point_down_from_defs_and_cli_to_scaleout_and_the_core():
    """defs/ and cli/ assemble and start; scaleout/ and the core never import them back."""
    upward = [f"{path.relative_to(PACKAGE)}: {line.strip()}"
              for path in sorted(PACKAGE.rglob("*.py")) if path.relative_to(PACKAGE).parts[0] not in ("defs", "cli")
              for line in path.read_text().splitlines()
              if line.lstrip().startswith(("from flower_pipeline.defs", "from flower_pipeline.cli",
                                           "import flower_pipeline.defs", "import flower_pipeline.cli"))]
    assert not upward, upward
