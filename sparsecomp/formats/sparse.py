"""Tiled CSR: the sparse weight format of SparseLinear / SparseConv2d.

Why this format: at batch 1 a sparse layer is memory-bound, so its speed is set by the bytes moved per
nonzero. int32 CSR moves 4 (value) + 4 (column) = 8 B per fp32 nonzero, which only beats dense (4 B per
weight) above 50% sparsity. Here columns are split into tiles of 65536 so that a column index fits in 16
bits: 6 B per nonzero, break-even at 33% sparsity (fp16 on CUDA: 4 B, 50%). For in_features <= 65536 (every
common layer) there is a single tile and the layout is exactly CSR with uint16 column indices.

Layout, for a weight of shape [rows, cols]:
- ``values`` [nnz]: the nonzeros, row by row, in increasing column order (dtype of the weight);
- ``col_idx`` [nnz] int16: column within its tile, as uint16 bits (65535 is stored as -1);
- ``row_ptr`` [rows * tiles + 1] int64: nonzeros of (row o, tile t) are
  ``values[row_ptr[o * tiles + t] : row_ptr[o * tiles + t + 1]]`` and their column is
  ``t * TILE_COLS + (col_idx & 0xFFFF)``.
int64 row pointers mean more than 2**31 nonzeros are representable.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

TILE_COLS = 65536  # must match kTileCols in csrc/cpu/spmm.h


def num_col_tiles(cols: int) -> int:
    return 1 if cols <= TILE_COLS else -(-cols // TILE_COLS)


@dataclass
class TiledCSR:
    values: torch.Tensor
    col_idx: torch.Tensor
    row_ptr: torch.Tensor
    shape: tuple[int, int]

    @property
    def rows(self) -> int:
        return self.shape[0]

    @property
    def cols(self) -> int:
        return self.shape[1]

    @property
    def tiles(self) -> int:
        return num_col_tiles(self.cols)

    @property
    def nnz(self) -> int:
        return self.values.numel()

    @classmethod
    def from_dense(cls, weight: torch.Tensor) -> "TiledCSR":
        """Keeps the nonzeros of a 2-D weight (NaN and Inf count as nonzero and are kept)."""
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            raise ValueError(f"weight must be a 2-D tensor, got {type(weight).__name__} "
                             f"{tuple(weight.shape) if isinstance(weight, torch.Tensor) else ''}")
        if not weight.is_floating_point():
            raise TypeError(f"weight must be a floating-point tensor, got {weight.dtype}")
        weight = weight.detach()
        rows, cols = weight.shape
        tiles = num_col_tiles(cols)
        mask = weight != 0
        # nonzero() is row-major with ascending columns, which is already (row, tile, column) order.
        r, c = mask.nonzero(as_tuple=True)
        values = weight[r, c].contiguous()
        col_idx = (c % TILE_COLS).to(torch.int32).to(torch.int16)  # wraps 32768..65535 to negative int16
        seg = r * tiles + torch.div(c, TILE_COLS, rounding_mode="floor")
        counts = torch.bincount(seg, minlength=rows * tiles) if seg.numel() else torch.zeros(
            rows * tiles, dtype=torch.long, device=weight.device)
        row_ptr = torch.zeros(rows * tiles + 1, dtype=torch.long, device=weight.device)
        row_ptr[1:] = torch.cumsum(counts, 0)
        return cls(values, col_idx.contiguous(), row_ptr, (rows, cols))

    def to_dense(self) -> torch.Tensor:
        rows, cols = self.shape
        out = torch.zeros(rows, cols, dtype=self.values.dtype, device=self.values.device)
        if self.nnz == 0:
            return out
        seg_len = self.row_ptr[1:] - self.row_ptr[:-1]
        seg = torch.repeat_interleave(torch.arange(rows * self.tiles, device=self.row_ptr.device), seg_len)
        r = torch.div(seg, self.tiles, rounding_mode="floor")
        c = (seg % self.tiles) * TILE_COLS + (self.col_idx.to(torch.int64) & 0xFFFF)
        out[r, c] = self.values
        return out

    def validate(self) -> None:
        """Raises ValueError unless the arrays describe a valid [rows, cols] tiled-CSR matrix.

        Run on anything loaded from a file: the kernels trust row_ptr and col_idx for memory addressing.
        """
        rows, cols = self.shape
        if rows < 0 or cols < 0:
            raise ValueError(f"shape must be non-negative, got {self.shape}")
        if self.values.dim() != 1 or self.col_idx.dim() != 1 or self.row_ptr.dim() != 1:
            raise ValueError("values, col_idx and row_ptr must be 1-D")
        if self.col_idx.dtype != torch.int16:
            raise ValueError(f"col_idx must be int16, got {self.col_idx.dtype}")
        if self.row_ptr.dtype != torch.int64:
            raise ValueError(f"row_ptr must be int64, got {self.row_ptr.dtype}")
        if self.col_idx.numel() != self.values.numel():
            raise ValueError(f"col_idx has {self.col_idx.numel()} entries but values has {self.values.numel()}")
        if self.row_ptr.numel() != rows * self.tiles + 1:
            raise ValueError(f"row_ptr must have {rows * self.tiles + 1} entries for shape {self.shape}, "
                             f"got {self.row_ptr.numel()}")
        rp = self.row_ptr
        if int(rp[0]) != 0 or int(rp[-1]) != self.nnz or bool((rp[1:] < rp[:-1]).any()):
            raise ValueError("row_ptr must start at 0, be non-decreasing and end at nnz")
        if self.nnz:
            cols_in_tile = self.col_idx.to(torch.int64) & 0xFFFF
            seg = torch.repeat_interleave(torch.arange(rows * self.tiles, device=rp.device), rp[1:] - rp[:-1])
            col = (seg % self.tiles) * TILE_COLS + cols_in_tile
            if bool((col >= cols).any()):
                raise ValueError(f"col_idx holds a column >= {cols}")
