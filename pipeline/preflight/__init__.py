"""Pre-flight: will a variant export, quantize and pass a device's TensorRT op check — before anyone trains it?

Usage: ``python -m pipeline preflight --device jetson-orin-nano [--variant edge]`` (``make preflight DEVICE=...``).

For each variant (default ``paper`` and ``edge``), built with random weights (no checkpoint, no pretrained weights;
``create_model`` does no weight I/O), in numbered steps:

1. ``build``: the model from the variant registry (the profile's ``device.img_size`` when it sets one).
2. ``summary``: parameters and GFLOPs per part (:func:`model.summary.summarize`, batch 1).
3. ``export``: the FP32 ONNX of the full graph at the profile's opset (:func:`runtimes.export.export_onnx`), LayerNorm
   decomposed for a parser without it, as the export stage does.
4. ``quantize``: the Q/DQ INT8 ONNX for the profile (:func:`quantize.qdq.quantize_qdq_int8`, mask head in float, the
   backend and float remainder the quantize stage would pick) calibrated on a few random inputs: accuracy is not the
   point here, whether the graph quantizes and what it costs is.
5. ``opcheck``: :func:`quantize.trt_compat.check_trt_compat` of the profile's TensorRT version on both ONNX files; a
   failure names the ops and nodes the parser would reject (the engine will not build on that device).
6. ``parity``: ONNX Runtime vs PyTorch on random inputs: the FP32 ONNX within ``parity_atol + parity_rtol·max|ref|``;
   the Q/DQ ONNX runs and gives finite outputs (its difference is recorded, not judged).

A step whose input is missing (an earlier step failed) is a ``skipped`` row; every failure is a row with the reason.
Results: ``runs/preflight/<device>/<variant>/preflight.json`` and ``preflight.md`` (written atomically), the worker's
log beside them, and the ONNX files with ``--keep-onnx``. The exit status is 1 when any step of any variant failed.

Time is wall-clock (``perf_counter``) per step. Memory is the resident set size (RSS) of the variant's process, which
counts native allocations (PyTorch, ONNX Runtime, protobuf), not only Python objects. Each variant runs in its own
fresh process, so one variant's peak never hides in another's. The per-step peak is the kernel's high-water mark
``VmHWM``, reset to the current RSS when the step starts (``/proc/self/clear_refs``, Linux ≥ 4.0): an exact peak, not
a sample. It includes what earlier steps left resident (the PyTorch model stays loaded for the parity step), so each
row also gives the RSS when the step started. Where the reset is not possible the peak is the process's peak so far
(``ru_maxrss``), an upper bound, and the JSON says so. A variant killed by the kernel (out of memory), by
``--max-rss-gb`` or by ``--timeout`` is reported with the step it was in and the memory it had reached.

The package, by part: :mod:`~pipeline.preflight.plan` (the steps, their options and what they share),
:mod:`~pipeline.preflight.steps` (what each step does), :mod:`~pipeline.preflight.measure` (the step runner: time and
peak RSS per step, progress events), :mod:`~pipeline.preflight.worker` (one variant in its own process),
:mod:`~pipeline.preflight.driver` (every variant, results written), :mod:`~pipeline.preflight.render` (the step
table and the Markdown report) and :mod:`~pipeline.preflight.command` (the ``preflight`` sub-command).
"""
