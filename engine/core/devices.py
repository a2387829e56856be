"""The devices this build runs on, by name: checked without torch, so the explorer refuses `--device mps`
before a screen appears and the headless commands before anything loads. (engine/models.py then checks
that the named device exists on this machine.)

Torch-free: shared by both processes.
"""

from __future__ import annotations

import re

from dit_explore.engine.core.text import shown

SUPPORTED = "auto, cpu, cuda, cuda:N"
# --quantize: how the transformer blocks may be quantized (engine/models.py `quantize_blocks`, torchao).
QUANTIZATIONS = ("int8", "fp8", "fp8-weights")
# What each one keeps in 8 bits, as the explorer's status line says it.
QUANTIZED = {"int8": "int8 weights", "fp8": "FP8 weights and activations", "fp8-weights": "FP8 weights"}
_NAME = re.compile(r"(auto|cpu|cuda(:[0-9]{1,3})?)")
_OTHER_TORCH = ("mps", "meta", "xpu", "xla", "hip", "ipu", "mtia", "privateuseone", "vulkan", "hpu", "ve", "lazy",
                "maia", "fpga", "ort", "mkldnn", "opengl", "opencl", "ideep")


def device_problem(requested: str) -> str | None:
    """Why `--device requested` cannot run here (one line), or None for auto, cpu, cuda and cuda:N."""
    if _NAME.fullmatch(requested):
        return None
    kind = requested.split(":", 1)[0]
    if kind == "cpu":
        return f"--device {shown(requested)}: there is one cpu device (use --device cpu)"
    if kind in _OTHER_TORCH:
        return f"--device {shown(requested)}: dit-explore runs on {SUPPORTED}, not on {kind}"
    return f"--device {shown(requested)}: not a device (this build runs on {SUPPORTED})"
