"""Kernel backends: which implementation runs the three heavy operators of one model or serving runtime.

A backend is an object handed to what it serves, never a process-wide switch:
`HymbaForCausalLM(config, kernels=...)` (or `model.use_kernels(...)`, `cuda.load_model(..., kernels=...)`);
a `ServingRuntime` runs its model's.

    REFERENCE     `ReferenceKernels`: the `torch.ops.hymba.*` custom ops (`hymba_deploy.ops`; one node each
                  when exported), PyTorch implementations on CPU and CUDA tensors
    CudaKernels   `hymba_deploy.cuda`: the plugin kernels for CUDA tensors, these same ops for CPU tensors

Two families of calls, one per client:
- the model's (`selective_scan`, `causal_conv1d`, `windowed_attention`): the ops' own signatures
  (`hymba_deploy.ops` docstrings are the contract), new state returned;
- the serving runtime's in-place variants (`conv_`, `scan_`, `attn`): the final state written into a
  preallocated cache buffer, attention optionally into `out` with a device-side key count.
"""

from __future__ import annotations

import torch

from . import ops  # noqa: F401  (registers torch.ops.hymba.*)
from .errors import HymbaDeployError


class ReferenceKernels:
    """The `torch.ops.hymba.*` ops (PyTorch implementations); subclasses replace them for some tensors."""

    name = "reference"
    writes_state_in_place = False      # True: `scan_` updates an fp32 state buffer itself (no copy)

    # ---- the model's calls --------------------------------------------------------------------------
    def selective_scan(self, x, dt, A, B, C, D=None, z=None, dt_bias=None, initial_state=None):
        return torch.ops.hymba.selective_scan(x, dt, A, B, C, D, z, dt_bias, initial_state)

    def causal_conv1d(self, x, weight, bias=None, conv_state=None, activation="silu"):
        return torch.ops.hymba.causal_conv1d(x, weight, bias, conv_state, activation=activation)

    def windowed_attention(self, q, k, v, window: int, num_meta: int, scale: float, kv_lengths=None):
        return torch.ops.hymba.windowed_attention(q, k, v, window, num_meta, scale, kv_lengths)

    # ---- the serving runtime's in-place calls -------------------------------------------------------
    def conv_(self, x, weight, bias, state, fresh: bool = False):
        """x (B, T, I) -> y (B, T, I); state (B, I, K) set to the last K inputs. `fresh=True` (prefill): the
        state buffer is not read, the conv starts from zeros; otherwise it is the initial state."""
        y, new_state = self.causal_conv1d(x, weight, bias, None if fresh else state, activation="silu")
        state.copy_(new_state)
        return y

    def scan_(self, x, dt, A, B, C, D, z, dt_bias, state, fresh: bool = False):
        """The recurrence over T positions; state (B, I, N) set to the last one (`fresh` as in `conv_`)."""
        y, new_state = self.selective_scan(x, dt, A, B, C, D, z, dt_bias, None if fresh else state)
        state.copy_(new_state)
        return y

    def device_kv_len(self, device) -> bool:
        """True if `attn` takes the key count as a device tensor (then decode graphs need no eager holes)."""
        return False

    def attn(self, q, k, v, window, num_meta, scale, out=None, kv_len=None):
        """Windowed attention into `out` when given; kv_len: None, or (where `device_kv_len`) an int32 device
        tensor of valid keys, shape (1,) (one count for every row) or (B,) (row b's keys k/v[b, :kv_len[b]])."""
        if kv_len is not None:
            raise HymbaDeployError(f"a device-side key count needs the cuda kernels (these are {self.name!r})")
        res = self.windowed_attention(q, k, v, window, num_meta, scale)
        return res if out is None else out.copy_(res)

    def __repr__(self) -> str:
        return f"<{self.name} kernels>"


REFERENCE = ReferenceKernels()
