"""What the torch export rows share (torch.nn+onnx, torch.nn+onnx.dynamo, torch.nn+openvino).

- ``quiet_native()``: file descriptors 1 and 2 on /dev/null, Python warnings ignored and the
  exporters' loggers at ERROR around an export, a conversion or a session: exporters and runtimes
  also print from C++, below Python's sys.stderr.
- ``exported_module(config)``: the module torch.nn builds for a config (for ``exported_parameters``).
- ``placeholder_module(module)``: a twin with distinct values in weight, bias and the running
  statistics, so that no exporter merges two equal tensors into one initializer.
- ``example_input(rank, C, dtype)``: the fixed example every graph is exported with (3 samples, 2
  positions per spatial axis: no axis of size 0 or 1 to specialize, N > 1 for a training trace).
- ``graph_key(module, x)``: what an exported graph depends on besides the state values.
- ``module_subject(module, x)``: the graph key, the state's bytes and the example's: the subject an
  exported artifact is kept under (bnconform.adapters.export_cache).
- ``shortest(value)``: the decimal a float32 attribute was written from (0.9, not 0.899999976).

Importing this module does not import torch.
"""

from __future__ import annotations

import copy

import numpy as np

from ...caseformat import model
from ..quiet import silenced
from .common import torch, torch_dtype
from .nn import momentum_for

LOGGERS = ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx", "onnxscript", "onnx_ir", "openvino")
PARAMETERS = ("weight", "bias", "running_mean", "running_var")  # BatchNormalization inputs 1..4, in order


def quiet_native():
    """:func:`..quiet.silenced` with the exporters' loggers (descriptors 1 and 2 on /dev/null meanwhile)."""
    return silenced(LOGGERS)


def placeholder_module(module):
    """A copy of ``module`` whose parameters and buffers hold distinct values (1.5, 2.5, ... per
    tensor), so that no exporter merges two of them into one initializer."""
    twin = copy.deepcopy(module)
    with torch().no_grad():
        for index, name in enumerate(PARAMETERS):
            tensor = getattr(twin, name)
            if tensor is not None:
                tensor.copy_(torch().arange(tensor.numel(), dtype=torch().float64) / 8 + index + 1.5)
    return twin


def example_input(rank: int, channels: int, dtype):
    """A fixed channels-first example: 3 samples, 2 positions per spatial axis (no axis of size 0
    or 1, which the exporters would specialize; N > 1 so a training trace runs)."""
    generator = torch().Generator().manual_seed(0)
    shape = (3, channels, *([2] * (rank - 2)))
    return torch().randn(*shape, generator=generator, dtype=torch().float64).to(dtype)


def graph_key(module, x) -> tuple:
    """What the exported graph depends on (its state values are written per case)."""
    return (type(module).__name__, module.num_features, str(x.dtype), str(module.running_mean.dtype),
            module.affine, module.eps, module.momentum, module.training, x.dim())


def module_subject(module, x) -> bytes:
    """What an exporter reads of a BN module and its example input (export_cache's subject): the
    :func:`graph_key`, then each parameter's and buffer's dtype and bytes (None: absent) and the
    example input's dtype, shape and bytes."""
    parts = [repr(graph_key(module, x)).encode()]
    for name in PARAMETERS:
        tensor = getattr(module, name)
        parts.append(name.encode() + (b"=None" if tensor is None else f"={tensor.dtype}:".encode() + raw_bytes(tensor)))
    parts.append(f"x={x.dtype}{tuple(x.shape)}:".encode() + raw_bytes(x))
    return b";".join(parts)


def raw_bytes(tensor) -> bytes:
    """A tensor's bytes, as the CPU holds them (bfloat16 included: viewed as uint8, which NumPy can hold)."""
    return tensor.detach().contiguous().cpu().view(-1).view(torch().uint8).numpy().tobytes()


def shortest(value: float) -> float:
    """The shortest decimal that rounds to the float32 an ONNX FLOAT attribute stores (0.9, not
    0.8999999761581421): the value the exporter was given, as a user reads it."""
    return float(str(np.float32(value)))


def exported_module(config: model.Config, rank: int = 4, channels: int = 2):
    """The module torch.nn builds for ``config`` (BatchNorm2d for rank 4), on the CPU."""
    t = torch()
    cls = {2: t.nn.BatchNorm1d, 3: t.nn.BatchNorm1d, 4: t.nn.BatchNorm2d, 5: t.nn.BatchNorm3d}[rank]
    return cls(channels, eps=config.effective_epsilon, momentum=momentum_for(config), affine=config.scale,
               dtype=torch_dtype(config.param_dtype))
