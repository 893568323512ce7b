"""The staged RIS edge-deployment pipeline: data, train, distill, export, calibrate, quantize, build, validate, bench,
report. Usage: ``python -m pipeline run --config configs/demo.yaml``."""
