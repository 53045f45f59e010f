"""resnetcls: train, evaluate, explain, export and serve ResNet image classifiers."""
import os

__version__ = "0.1.0"

# PyTorch backs CPU tensors of 2 MB and more with transparent huge pages when this is set (read at its first
# such allocation, so set on import, before any). Every batch and activation is a fresh allocation, and
# faulting in 4 KB pages dominated: a 64 x 224 px float batch (38.5 MB) took 29 ms to fill on fresh pages and
# 8 ms with huge pages on the 2-core development machine. THP_MEM_ALLOC_ENABLE=0 in the environment opts out.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
