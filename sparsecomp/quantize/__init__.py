"""Parameter quantization: k-means weight clustering into codebooks and Huffman coding of index streams."""
from .huffman import entropy_bits, huffman_decode, huffman_encode
from .kmeans import kmeans
from .model import cluster_model

__all__ = ["cluster_model", "entropy_bits", "huffman_decode", "huffman_encode", "kmeans"]
