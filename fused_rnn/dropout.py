"""Inter-layer dropout masks as a pure function, in PyTorch.

This is the mirror of ``csrc/kernels/philox.cuh``: the same Philox4x32-10
bits, computed with int64 tensor arithmetic on any device, so the reference
stack and the CUDA kernel drop exactly the same elements for the same seed::

    counter = (j >> 2, b, t, 2 * layer + direction)
    key     = (seed & 0xffffffff, seed >> 32)
    keep    = philox4x32_10(counter, key)[j & 3] < floor((1 - p) * 2**32)

The seed is a 0-d int64 tensor drawn from torch's generator of the input's
device (:func:`draw_seed`), so no value ever travels to the host and
``torch.manual_seed`` makes runs reproducible. Masks are never stored: the
backward pass calls the same function again.
"""

from __future__ import annotations

import torch

_M32 = 0xFFFFFFFF
_PHILOX_M0 = 0xD2511F53
_PHILOX_M1 = 0xCD9E8D57
_PHILOX_W0 = 0x9E3779B9
_PHILOX_W1 = 0xBB67AE85


def dropout_threshold(p: float) -> int:
    """floor((1 - p) * 2**32), clamped to [0, 2**32]; same as the C++ version."""
    keep = (1.0 - float(p)) * 4294967296.0
    if keep <= 0.0:
        return 0
    if keep >= 4294967296.0:
        return 4294967296
    return int(keep)


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit words of a * b for a 32-bit constant a and b in [0, 2**32).

    The 64-bit product would overflow int64, so b is split into 16-bit halves;
    every intermediate stays below 2**49.
    """
    p_lo = b.bitwise_and(0xFFFF) * a
    p_hi = b.bitwise_right_shift(16) * a
    mid = p_lo + p_hi.bitwise_and(0xFFFF).bitwise_left_shift(16)
    lo = mid.bitwise_and(_M32)
    hi = p_hi.bitwise_right_shift(16) + mid.bitwise_right_shift(32)
    return hi, lo


def philox4x32_10(
    c0: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor, c3: torch.Tensor,
    k0: torch.Tensor, k1: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Philox4x32-10 on int64 tensors holding 32-bit words (broadcasting)."""
    for rnd in range(10):
        if rnd > 0:
            k0 = (k0 + _PHILOX_W0).bitwise_and(_M32)
            k1 = (k1 + _PHILOX_W1).bitwise_and(_M32)
        hi0, lo0 = _mulhilo(_PHILOX_M0, c0)
        hi1, lo1 = _mulhilo(_PHILOX_M1, c2)
        c0, c1, c2, c3 = (
            hi1.bitwise_xor(c1).bitwise_xor(k0),
            lo1,
            hi0.bitwise_xor(c3).bitwise_xor(k1),
            lo0,
        )
    return c0, c1, c2, c3


def _seed_key(seed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    seed = seed.reshape(()).to(torch.int64)
    return seed.bitwise_and(_M32), seed.bitwise_right_shift(32).bitwise_and(_M32)


def keep_mask(
    seed: torch.Tensor, layer: int, p: float, T: int, B: int, H: int,
    num_directions: int = 1, device: torch.device | None = None,
) -> torch.Tensor:
    """Boolean keep-mask of shape (T, B, num_directions * H) for one layer's output.

    Element [t, b, d * H + j] is mask(seed, layer, d, t, b, j).
    """
    device = seed.device if device is None else device
    k0, k1 = _seed_key(seed.to(device))
    Q = (H + 3) // 4
    i64 = dict(dtype=torch.int64, device=device)
    c0 = torch.arange(Q, **i64).view(1, 1, 1, Q)
    c1 = torch.arange(B, **i64).view(1, B, 1, 1)
    c2 = torch.arange(T, **i64).view(T, 1, 1, 1)
    c3 = (2 * layer + torch.arange(num_directions, **i64)).view(1, 1, num_directions, 1)
    shape = (T, B, num_directions, Q)
    words = philox4x32_10(
        c0.expand(shape), c1.expand(shape), c2.expand(shape), c3.expand(shape), k0, k1
    )
    bits = torch.stack(words, dim=-1).reshape(T, B, num_directions, 4 * Q)[..., :H]
    return (bits < dropout_threshold(p)).reshape(T, B, num_directions * H)


def apply_dropout(x: torch.Tensor, seed: torch.Tensor, layer: int, p: float,
                  num_directions: int) -> torch.Tensor:
    """Dropout of one layer's output x (T, B, D*H): x * mask / (1 - p); zeros for p = 1."""
    T, B, DH = x.shape
    if p >= 1.0:
        return torch.zeros_like(x)
    mask = keep_mask(seed, layer, p, T, B, DH // num_directions, num_directions, x.device)
    return x * mask.to(x.dtype) * (1.0 / (1.0 - p))


def draw_seed(device: torch.device) -> torch.Tensor:
    """A fresh 0-d int64 seed from torch's default generator of `device`.

    Drawn on the device itself: no host synchronisation, capturable in a CUDA
    graph, reproducible under torch.manual_seed.
    """
    return torch.randint(0, 2**62, (), dtype=torch.int64, device=device)
