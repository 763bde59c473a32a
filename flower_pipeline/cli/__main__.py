"""`python -m flower_pipeline.cli`: the same as the `flower-pipeline` command."""

import sys

from flower_pipeline.cli.main import main

sys.exit(main())
