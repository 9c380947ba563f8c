"""Winograd F(4x4, 3x3) convolution on CPU: the same 3x3 convolution in fewer FLOPs.

A stride-1, padding-1 3x3 convolution computes each 4x4 block of outputs from a 6x6 block of
inputs (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016): the input
tile `d` and the kernel `g` are transformed (`V = B^T d B`, `U = G g G^T`, both 6x6), multiplied
elementwise and summed over input channels, which for all tiles at once is 36 independent
GEMMs `[tiles, C_in] @ [C_in, C_out]`, and transformed back (`Y = A^T M A`, 4x4). That is
36 multiplies per 16 outputs instead of 144 (4x fewer FLOPs in the GEMMs), at the cost of
the transforms, which are memory-bound. Tiles are processed in chunks (~1 MiB of transformed
input tiles) that stay in cache between the three steps; without the chunking the transforms
stream hundreds of MB through memory and the whole is slower than oneDNN's direct convolution.

Accuracy: the transforms mix values of different magnitude (entries up to 8 in `A^T`, 1/24
in `G`), so the float32 result is off a float64 convolution by ~1e-5 of the output's max abs
value (measured 4e-6 to 1.1e-5 for 64-128 input channels), where oneDNN's direct convolution
is off by ~1e-6. Through a whole model this stays ~1e-5 relative (tests/test_fast_paths.py bounds
it at 1e-4 against diffusers).

Each model chooses, visibly, with `model.set_conv_implementation(...)` (one of
`CONV_IMPLEMENTATIONS`; not saved with the model):
- `"auto"` (the default): Winograd only where it was measured to be faster (benchmarks/README.md):
  CPU, float32, one intra-op thread, no autocast, at least `MIN_CHANNELS` in and out and
  `MIN_TILES` tiles of work. The numerics then depend on the thread count (Winograd with one
  thread, oneDNN with more), within the bound above.
- `"winograd"`: every convolution Winograd's algorithm can compute (CPU float32 3x3 stride-1
  padding-1), whatever the thread count or size: the thread count no longer picks the algorithm
  (its GEMMs still round differently with it, ~1e-7 relative, as oneDNN's do).
- `"direct"`: always `nn.Conv2d` (oneDNN), e.g. to compare with another implementation at
  float32 rounding level.
Compiled, exported and traced graphs always keep `nn.Conv2d`. In training the forward pass and
the input's gradient run Winograd's algorithm, the weight's gradient is oneDNN's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Input, kernel and output transforms of F(4x4, 3x3) (Lavin & Gray, 2016).
_BT = torch.tensor(
    [
        [4, 0, -5, 0, 1, 0],
        [0, -4, -4, 1, 1, 0],
        [0, 4, -4, -1, 1, 0],
        [0, -2, -1, 2, 1, 0],
        [0, 2, -1, -2, 1, 0],
        [0, 4, 0, -5, 0, 1],
    ],
    dtype=torch.float64,
)
_G = torch.tensor(
    [
        [1 / 4, 0, 0],
        [-1 / 6, -1 / 6, -1 / 6],
        [-1 / 6, 1 / 6, -1 / 6],
        [1 / 24, 1 / 12, 1 / 6],
        [1 / 24, -1 / 12, 1 / 6],
        [0, 0, 1],
    ],
    dtype=torch.float64,
)
_AT = torch.tensor(
    [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
    dtype=torch.float64,
)
_BT32, _AT32 = _BT.float(), _AT.float()
_KRON_G = torch.kron(_G, _G).float()  # [36, 9]: vec(G g G^T) = (G (x) G) vec(g)

# The choices of `model.set_conv_implementation`, the first the default (see the module's docstring).
CONV_IMPLEMENTATIONS = ("auto", "winograd", "direct")

# Below this many input or output channels the GEMMs are too thin to pay for the transforms
# (measured: 64 -> 64 channels ~1.1x, 3 -> 64 and 64 -> 3 channels slower than oneDNN).
MIN_CHANNELS = 64
# Below this many 4x4 output tiles (all images together) the per-call overhead of the chunks
# outweighs the saved multiplications (measured: 16 tiles slower, 32 tiles ~1.1x faster).
MIN_TILES = 32
# Bytes of transformed input tiles per chunk: sized so that a chunk's transformed tiles, GEMM
# outputs and inverse-transformed outputs stay in cache between the three steps.
CHUNK_BYTES = 1 << 20


def check_implementation(implementation: str) -> None:
    if implementation not in CONV_IMPLEMENTATIONS:
        raise ValueError(f"conv implementation must be one of {CONV_IMPLEMENTATIONS}, got {implementation!r}")


def applies(conv: nn.Conv2d, x: torch.Tensor, implementation: str = "auto") -> bool:
    """Whether `winograd_conv2d` replaces `conv(x)` under `implementation` (one of
    `CONV_IMPLEMENTATIONS`). `"winograd"`: where it computes the same convolution, a plain
    `nn.Conv2d` (no subclass, no hooks) that is 3x3, stride-1, padding-1, ungrouped, on float32 CPU
    tensors without autocast, and not while `torch.compile` / `torch.export` or `torch.jit.trace`
    trace. `"auto"`: there, and where it is faster (`_is_faster`). `"direct"`: never."""
    if implementation == "direct":
        return False
    return _computes(conv, x) and (implementation == "winograd" or _is_faster(conv, x))


def _is_faster(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """At least `MIN_CHANNELS` in and out, `MIN_TILES` output tiles, one intra-op thread."""
    return (
        min(conv.in_channels, conv.out_channels) >= MIN_CHANNELS
        and x.shape[0] * -(-x.shape[2] // 4) * -(-x.shape[3] // 4) >= MIN_TILES
        # One intra-op thread only: with two, oneDNN's direct convolution ran 1.9x faster, while
        # the memory-bound transforms did not scale (measured 0.6-1.0x of oneDNN on 2 cores).
        and torch.get_num_threads() == 1
    )


def _computes(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether `winograd_conv2d(conv, x)` computes `conv(x)` (see [`applies`])."""
    return (
        # Compiled, exported and traced graphs keep nn.Conv2d (checked first: nothing after it
        # is traced): the chunk loop would be unrolled for one shape, an exported graph is for
        # other runtimes, and running it eagerly between compiled graphs (measured 1.17x faster
        # than a compiled direct convolution, but still slower than eager) breaks `fullgraph=True`.
        not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
        and type(conv) is nn.Conv2d
        and not conv._forward_hooks
        and not conv._forward_pre_hooks
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and conv.weight.dtype == torch.float32
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and x.dim() == 4
        and not torch.is_autocast_enabled("cpu")
    )


def transformed_weight(weight: torch.Tensor) -> torch.Tensor:
    """`U = G g G^T` of every 3x3 kernel `g` of `weight` `[C_out, C_in, 3, 3]`: `[36, C_in, C_out]`,
    as one GEMM with `G (x) G` `[36, 9]`.

    Recomputed on every call instead of cached: it costs one small GEMM (~1% of a convolution
    of the backbone's sizes), needs no memory (a cache would hold 4x each weight) and can never
    be stale, however the weight was changed (`.data` writes bypass the version counter).
    """
    out_channels, in_channels = weight.shape[:2]
    kernels = weight.detach().transpose(0, 1).reshape(in_channels * out_channels, 9)  # a copy, 1/4 of the result
    return (_KRON_G @ kernels.T).view(36, in_channels, out_channels)


def winograd_conv2d(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """`conv(x)` for `x` `[B, C_in, H, W]` by Winograd F(4x4, 3x3); `[B, C_out, H, W]` with
    channels_last strides. Only valid where `applies(conv, x)`. Differentiable: the input's
    gradient is the same kind of convolution (with the flipped, transposed kernels) and runs
    Winograd's algorithm too; the weight's gradient is oneDNN's."""
    bias_requires_grad = conv.bias is not None and conv.bias.requires_grad
    if torch.is_grad_enabled() and (x.requires_grad or conv.weight.requires_grad or bias_requires_grad):
        return _WinogradConv2d.apply(x, conv.weight, conv.bias)
    return _convolve(x, conv.weight, conv.bias)


class _WinogradConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _convolve(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_output):
        x, weight = ctx.saved_tensors
        needs_x, needs_weight = ctx.needs_input_grad[:2]
        needs_bias = ctx.has_bias and ctx.needs_input_grad[2]
        # With create_graph (grad mode on here) every gradient comes from oneDNN's
        # convolution_backward, which autograd can differentiate again.
        winograd_x = needs_x and not torch.is_grad_enabled()
        grad_x, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
            grad_output,
            x,
            weight,
            [weight.shape[0]] if ctx.has_bias else None,
            [1, 1],
            [1, 1],
            [1, 1],
            False,
            [0, 0],
            1,
            [needs_x and not winograd_x, needs_weight, needs_bias],
        )
        if winograd_x:
            # The transposed convolution of a stride-1, padding-1 3x3 one is a padding-1 3x3
            # convolution with the kernels flipped and input / output channels swapped.
            grad_x = _convolve(grad_output, weight.flip(2, 3).transpose(0, 1), None)
        return grad_x, grad_weight, grad_bias


def _convolve(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`F.conv2d(x, weight, bias, padding=1)` by Winograd F(4x4, 3x3), without autograd."""
    batch, channels, height, width = x.shape
    with torch.no_grad():
        transformed = transformed_weight(weight)
    out_channels = transformed.shape[2]
    tile_rows, tile_cols = -(-height // 4), -(-width // 4)
    # [B, 4 * tile_rows + 2, 4 * tile_cols + 2, C_in]: zero padding of 1, plus up to 3 more on
    # the bottom / right so that the tiles cover the image.
    padded = F.pad(x.detach(), (1, 1 + 4 * tile_cols - width, 1, 1 + 4 * tile_rows - height)).permute(0, 2, 3, 1)
    out = torch.empty(batch, 4 * tile_rows, 4 * tile_cols, out_channels, dtype=x.dtype)
    bias = None if bias is None else bias.detach()
    for images, rows in _chunks(batch, tile_rows, 36 * tile_cols * channels * x.element_size()):
        _chunk(
            padded[images, 4 * rows.start : 4 * rows.stop + 2],
            transformed,
            bias,
            out[images, 4 * rows.start : 4 * rows.stop],
        )
    if out.shape[1] != height or out.shape[2] != width:
        out = out[:, :height, :width].contiguous()
    return out.permute(0, 3, 1, 2)


def _chunks(batch: int, tile_rows: int, row_bytes: int) -> list[tuple[slice, range]]:
    """(images, rows of tiles) of each chunk: whole images per chunk when one image's transformed
    tiles (`row_bytes` per row of tiles) fit `CHUNK_BYTES`, rows of one image otherwise."""
    budget = max(row_bytes, min(CHUNK_BYTES, batch * tile_rows * row_bytes))
    image_bytes = tile_rows * row_bytes
    if image_bytes <= budget:
        images = budget // image_bytes
        return [(slice(start, start + images), range(tile_rows)) for start in range(0, batch, images)]
    rows = budget // row_bytes
    return [
        (slice(image, image + 1), range(row, min(tile_rows, row + rows)))
        for image in range(batch)
        for row in range(0, tile_rows, rows)
    ]


def _chunk(padded: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor) -> None:
    """Convolve `padded` `[k, 4n + 2, 4m + 2, C_in]` into `out` `[k, 4n, 4m, C_out]` (views)."""
    images, rows, cols = padded.shape[0], (padded.shape[1] - 2) // 4, (padded.shape[2] - 2) // 4
    channels, out_channels = weight.shape[1], weight.shape[2]
    tiles = padded.unfold(1, 6, 4).unfold(2, 6, 4)  # [k, n, m, C_in, 6, 6], overlapping views
    d = tiles.permute(4, 5, 0, 1, 2, 3).reshape(6, -1)  # [6 (i), 6 (j) * k * n * m * C_in], a copy
    v = torch.matmul(_BT32, (_BT32 @ d).view(6, 6, -1))  # B^T d B: [6 (a), 6 (b), tiles * C_in]
    m = torch.bmm(v.view(36, -1, channels), weight)  # [36, tiles, C_out]
    y = torch.matmul(_AT32, (_AT32 @ m.view(6, -1)).view(4, 6, -1))  # A^T m A: [4, 4, tiles * C_out]
    y = y.view(4, 4, images, rows, cols, out_channels).permute(2, 3, 0, 4, 1, 5)
    out.view(images, rows, 4, cols, 4, out_channels).copy_(y)
    if bias is not None:
        out.add_(bias)
