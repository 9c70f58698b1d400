"""The recurrent cores of the LSTM and GRU generators: nn.LSTM and nn.GRU, except under bf16 autocast.

Under CUDA autocast torch runs every cuDNN RNN in fp16 whatever dtype autocast was given: its
Autocast kernel for _cudnn_rnn (aten/src/ATen/cudnn/AutocastRNN.cpp, _cudnn_rnn_cast_reflatten)
casts the input, weights and hidden state to kHalf. A "bf16" run would train its recurrent core in
fp16 without loss scaling. Where cuDNN has bf16 RNNs (torch built with cuDNN >= 9.13, Ampere or
newer: CUDAHooks::supportsBFloat16RNNWithCuDNN), the core below leaves autocast and runs in bf16
itself; elsewhere it stays fp16 and the training set-up turns loss scaling on.
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn


@functools.lru_cache(maxsize=None)
def cudnn_has_bf16_rnn(device_index: int, cudnn_enabled: bool) -> bool:
    """Whether torch runs a bf16 RNN on this GPU through cuDNN (and not its slow per-step fallback):
    asked of torch itself, with a one-token GRU whose autograd node names the kernel that ran."""
    if not cudnn_enabled:
        return False
    device = torch.device("cuda", device_index)
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast("cuda", enabled=False):
        x = torch.zeros(1, 1, 8, device=device, dtype=torch.bfloat16, requires_grad=True)
        weights = [torch.zeros(shape, device=device, dtype=torch.bfloat16)
                   for shape in ((24, 8), (24, 8), (24,), (24,))]
        out = torch.gru(x, torch.zeros(1, 1, 8, device=device, dtype=torch.bfloat16), weights,
                        True, 1, 0.0, True, False, True)[0]
    return ran_on_cudnn(out)


def ran_on_cudnn(output: torch.Tensor) -> bool:
    """Whether an RNN's output (with autograd on) came from cuDNN: its node, or one a few views up."""
    nodes = [output.grad_fn]
    for _ in range(4):
        if any("CudnnRnn" in type(node).__name__ for node in nodes if node is not None):
            return True
        nodes = [parent for node in nodes if node is not None for parent, _ in node.next_functions]
    return False


def _bf16_core(x: torch.Tensor) -> bool:
    return (x.is_cuda and torch.is_autocast_enabled("cuda") and torch.get_autocast_dtype("cuda") == torch.bfloat16
            and cudnn_has_bf16_rnn(x.device.index or 0, torch.backends.cudnn.enabled))


def _flat_weights_as(module: nn.RNNBase, dtype: torch.dtype) -> list[torch.Tensor]:
    """The fp32 weights cast into one buffer, layer by layer in the order cuDNN lays them out, so
    cuDNN takes them as they are instead of compacting them on every call."""
    weights = [w for layer in module.all_weights for w in layer]
    flat = torch.cat([w.reshape(-1).to(dtype) for w in weights])
    return [piece.view_as(w) for piece, w in zip(flat.split([w.numel() for w in weights]), weights)]


class _Bf16Core:
    """The forward of an nn.LSTM/nn.GRU whose core runs in bf16 under CUDA bf16 autocast where cuDNN can."""

    def forward(self, input, hx=None):
        if not _bf16_core(input):
            return super().forward(input, hx)
        with torch.autocast("cuda", enabled=False):
            return self.run_in(torch.bfloat16, input, hx)


class LSTMCore(_Bf16Core, nn.LSTM):
    def run_in(self, dtype: torch.dtype, input, hx=None):
        """The LSTM in `dtype`: weights cast on the way in, their gradients flowing back to the fp32 ones."""
        if hx is None:
            zeros = input.new_zeros(self.num_layers, input.shape[0], self.hidden_size, dtype=dtype)
            hx = (zeros, zeros)
        out, h, c = torch.lstm(input.to(dtype), (hx[0].to(dtype), hx[1].to(dtype)), _flat_weights_as(self, dtype),
                               self.bias, self.num_layers, float(self.dropout), self.training, self.bidirectional,
                               self.batch_first)
        return out, (h, c)


class GRUCore(_Bf16Core, nn.GRU):
    def run_in(self, dtype: torch.dtype, input, hx=None):
        """The GRU in `dtype`: weights cast on the way in, their gradients flowing back to the fp32 ones."""
        if hx is None:
            hx = input.new_zeros(self.num_layers, input.shape[0], self.hidden_size, dtype=dtype)
        return torch.gru(input.to(dtype), hx.to(dtype), _flat_weights_as(self, dtype), self.bias, self.num_layers,
                         float(self.dropout), self.training, self.bidirectional, self.batch_first)
