"""``computenet.xp()``: the array namespace for the devices a job was given, so that one
function body runs on any pool: NumPy on CPUs, CuPy or torch where the job has a GPU and
they are installed, each through array-api-compat's standard interface."""

from __future__ import annotations

import os
from typing import Any


def xp() -> Any:
    import array_api_compat

    vendors = set(filter(None, os.environ.get("CNET_VENDOR", "").split(",")))
    if vendors & {"nvidia", "amd"}:
        try:
            import cupy

            return array_api_compat.array_namespace(cupy.empty(0))
        except ImportError:
            pass
        try:
            import torch

            if torch.cuda.is_available():
                return array_api_compat.array_namespace(torch.empty(0, device="cuda"))
        except ImportError:
            pass
    import numpy

    return array_api_compat.array_namespace(numpy.empty(0))
