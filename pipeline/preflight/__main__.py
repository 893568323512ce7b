"""The worker's entry: ``python -m pipeline.preflight worker REQUEST`` runs one variant from a request file written by
the parent (:func:`pipeline.preflight.worker.run_isolated`); the command line's entry is ``python -m pipeline
preflight``."""

import contextlib
import sys

from pipeline.preflight.worker import worker_main

if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "worker":
        with contextlib.suppress(KeyboardInterrupt):
            sys.exit(worker_main(sys.argv[2]))
        sys.exit(130)
    print("usage: python -m pipeline preflight --device NAME (this module's own entry is the worker)", file=sys.stderr)
    sys.exit(2)
