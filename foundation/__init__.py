"""The bottom layer: the error hierarchy (:mod:`foundation.errors`) and atomic file I/O (:mod:`foundation.io`).

Usage: ``from foundation.errors import ConfigError``; ``from foundation.io import atomic_write_json``.

Every package (``pipeline``, ``quantize``, ``runtimes``, ``benchmarks``) may import it, and it imports nothing of the
project: that is what the name says, it is what the rest stands on. It holds only what every layer needs and nothing
else, so it is not a "common" or "utils" catch-all: a helper that only one package uses belongs in that package. It is
standard library only and Python 3.8 compatible, because the deploy bundle carries it (``pipeline/bundle.py``
``VENDORED``). ``tests/test_layering.py`` checks the rules. The ``model`` package does not use it: it keeps its own
:class:`model.ModelError` so that it imports nothing outside itself.
"""
