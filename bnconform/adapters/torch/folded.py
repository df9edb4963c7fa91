"""``torch.nn+folded``: the torch.nn BatchNorm module folded into a preceding identity convolution.

The model a user deploys after folding: ``nn.Sequential(conv, bn)`` in eval mode, fused by
``torch.ao.quantization.fuse_modules(model, [["0", "1"]])`` (the call the quantization / deployment
recipes use; for a Conv + BatchNorm pair in eval mode it calls
``torch.nn.utils.fusion.fuse_conv_bn_eval``), which returns ``Sequential(conv', Identity())``: one
convolution whose weight and bias carry the BN,

    w' = w * gamma * rsqrt(running_var + eps)        b' = (b - running_mean) * rsqrt(running_var + eps) * gamma + beta

computed in the parameter dtype (``fuse_conv_bn_weights``), then run: y = conv'(x) = x * w' + b'.

* The convolution is the identity: kernel size 1, ``groups = C`` (depthwise) with weight 1, no bias
  (b = 0), in the parameter dtype, so the expected values stay the BN's. Depthwise rather than a
  full C x C identity matrix, so a non-finite value stays in its channel as in BN (a full matrix
  would spread 0 * Inf = NaN into every channel, an artefact of the identity layer, not of folding).
* Rank 3 / 4 / 5: Conv1d / Conv2d / Conv3d after the BatchNorm1d / 2d / 3d the torch.nn row builds;
  rank 2 (N, C) runs as (N, C, 1) through Conv1d + BatchNorm1d (a view; BatchNorm1d takes both).
  Other channel axes are moved to 1 and back, as in torch.nn (``_forward`` is that row's hook).
* The folded module keeps no running statistics and only infers: ``keeps_state = False``, inference
  steps only (``("running", False)``), no gradients; each step is folded from the state the case
  expects before it (the fold is ~1 ms: nothing worth caching but the identity conv).
* A half input with float32 parameters: the fused conv keeps the float32 weight and bias, and
  convolution needs one dtype, so the call raises (declared below) where the eager BN runs its
  mixed-type kernel.

Importing this module does not import torch.
"""

from __future__ import annotations


from ...judging.selectors import input_dtype_in, param_dtype_in
from ..base import Deviation, Raises
from .common import torch
from .nn import TorchModuleAdapter

# fuse_conv_bn_eval / fuse_conv_bn_weights at the commit torch 2.13.0 was built from (torch.version.git_version).
FUSION_SOURCE = ("https://github.com/pytorch/pytorch/blob/cf30153c4c131c8164ee7798e5022d810682e2cb/"
                 "torch/nn/utils/fusion.py")
_CONV_BY_RANK = {2: "Conv1d", 3: "Conv1d", 4: "Conv2d", 5: "Conv3d"}


def identity_conv(rank: int, channels: int, dtype, device):
    """A depthwise kernel-size-1 convolution with weight 1 and no bias: the identity on (N, C, ...)."""
    conv = getattr(torch().nn, _CONV_BY_RANK[rank])(channels, channels, 1, groups=channels, bias=False,
                                                      dtype=dtype, device=device)
    with torch().no_grad():
        conv.weight.fill_(1)
    return conv.eval()


def fold(conv, bn):
    """``fuse_modules(Sequential(conv, bn).eval(), [["0", "1"]])`` (a copy: the originals stay),
    checked to be one convolution with no BatchNorm left."""
    from torch.ao.quantization import fuse_modules

    fused = fuse_modules(torch().nn.Sequential(conv, bn).eval(), [["0", "1"]])
    kinds = [type(m).__name__ for m in fused]
    if kinds != [type(conv).__name__, "Identity"]:
        raise RuntimeError(f"Expected: fuse_modules to leave [{type(conv).__name__}, Identity]. Received: {kinds}")
    return fused


class TorchFoldedAdapter(TorchModuleAdapter):
    """torch.nn's BatchNorm module (eval, the case's state) folded into an identity convolution."""

    name = "torch.nn+folded"
    execution_mode = "folded"
    eager_row = "torch.nn"
    keeps_state = False
    notes = ("Conv(k=1, groups=C, weight 1) + BatchNorm fused by torch.ao.quantization.fuse_modules "
             "(fuse_conv_bn_eval); rank 2 as (N, C, 1) through Conv1d; inference steps only")
    speed_note = ("~1 ms per inference step (the first ~0.2 s, importing torch.ao.quantization): a deepcopy and "
                  "fuse_conv_bn_weights per state, then one conv call")
    capabilities = TorchModuleAdapter.capabilities.inference_only()
    # torch.nn's declarations are about training, updates and gradients: none reaches an inference step.
    deviations = (
        Deviation(
            name="folded-conv-refuses-half-input",
            kind="dtype",
            applies=input_dtype_in("float16", "bfloat16") & param_dtype_in("float32"),
            behaviour=Raises("RuntimeError", r"Input type \(c10::(Half|BFloat16)\) and bias type \(float\) "
                                             r"should be the same"),
            explanation="fuse_conv_bn_weights writes w' and b' in the convolution's (float32) dtype, and a "
                        "convolution takes one dtype for input, weight and bias, so the folded module refuses the "
                        "float16 / bfloat16 input that the unfolded BatchNorm (its mixed-type kernel, float32 "
                        "parameters) normalizes",
            link=FUSION_SOURCE),
    )

    def __init__(self):
        super().__init__()
        self._convs = {}  # (rank, C, dtype, device) -> identity conv

    def _forward(self, module, x):
        """The folded module on a channels-first x (``module``: the BN in eval mode, state loaded)."""
        rank, channels = x.dim(), module.num_features
        key = (rank, channels, module.running_mean.dtype, module.running_mean.device)
        if key not in self._convs:
            self._convs[key] = identity_conv(rank, channels, key[2], key[3])
        fused = fold(self._convs[key], module)
        return fused(x.unsqueeze(-1)).squeeze(-1) if rank == 2 else fused(x)
