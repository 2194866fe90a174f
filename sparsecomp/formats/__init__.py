"""Compressed weight containers and their conversion from dense tensors."""
from .sparse import TILE_COLS, TiledCSR

__all__ = ["TILE_COLS", "TiledCSR"]
