"""Data: the REFER loader (RefCOCO family, RefClef, SynRef), the SynRef generator, the datasets and mask transforms.

Usage: ``from pipeline.data.refer import load_refer``; ``from pipeline.data.dataset import RISDataset``.

Modules: :mod:`~pipeline.data.refer` (loading, masks), :mod:`~pipeline.data.synref` (generator),
:mod:`~pipeline.data.transforms` (training-only mask resizing), :mod:`~pipeline.data.dataset` (training dataset and
evaluation iterator). The image reading and transform and the tokenizer are the robot's code too, so they live in
:mod:`runtimes.image` and :mod:`runtimes.tokenizer`, and this package imports them from there. Nothing is imported
here, so importing one module does not pull in pycocotools.
"""
