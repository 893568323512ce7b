"""Usage: ``python -m pipeline run --config configs/demo.yaml``."""

import sys

from pipeline.cli import main

sys.exit(main())
