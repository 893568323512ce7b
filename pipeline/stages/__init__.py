"""Stage bodies. Importing this package registers every stage (see :mod:`pipeline.stage`).

Stage modules import their heavy dependencies (torch, onnx, openvino, ...) inside the stage function, so listing or
checking stages stays fast.
"""

import importlib
import pkgutil

for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")
