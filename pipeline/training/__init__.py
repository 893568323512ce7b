"""Training: the loop and its parts, one concern per module; the train and distill stages compose them.

Usage: ``from pipeline.training.loop import fit; fit(cfg, data_dir, out, seg_task(cfg.train))``.

- :mod:`~pipeline.training.loop`: :func:`~pipeline.training.loop.fit`, model building, validation, the metrics log;
- :mod:`~pipeline.training.objectives`: what the loop optimises (segmentation, distillation) and the losses;
- :mod:`~pipeline.training.data`: the rank-sharded sample order, the batch stream, flips, the teacher's view;
- :mod:`~pipeline.training.distributed`: torchrun's process group, synchronised BatchNorm, DDP;
- :mod:`~pipeline.training.optim`: parameter groups, the lr schedule, mixed precision;
- :mod:`~pipeline.training.state`: seeding and the resumable ``last/`` state.

The arrows point down this list (``loop`` imports the others; ``objectives`` imports ``data``); nothing here
imports a stage. The command line (``python -m pipeline.train``, torchrun) is :mod:`pipeline.train`.
"""
