"""Data: the REFER loader (RefCOCO family, RefClef, SynRef), the SynRef generator, tokenization and transforms.

Usage: ``from pipeline.data.refer import load_refer``; ``from pipeline.data.tokenize import TextTokenizer``.

Modules: :mod:`~pipeline.data.refer` (loading, masks), :mod:`~pipeline.data.synref` (generator),
:mod:`~pipeline.data.tokenize` and :mod:`~pipeline.data.transforms` (numpy only; the robot-side runtime uses them),
:mod:`~pipeline.data.dataset` (training dataset and evaluation iterator). Nothing is imported here, so the runtime
can import the tokenizer and transforms without pycocotools.
"""
