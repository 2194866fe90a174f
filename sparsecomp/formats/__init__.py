"""Compressed weight containers and their conversion from dense tensors."""
from .codebook import dequantize, pack_indices, row_words, unpack_indices
from .sparse import TILE_COLS, TiledCSR

__all__ = ["TILE_COLS", "TiledCSR", "dequantize", "pack_indices", "row_words", "unpack_indices"]
