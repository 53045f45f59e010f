"""resnetcls: train, evaluate, explain, export and serve ResNet image classifiers."""
import os

__version__ = "0.1.0"

# PyTorch backs CPU tensors of 2 MB and more with transparent huge pages when this is set (read at its first
# such allocation, so set on import, before any). Every normalised data batch is a fresh allocation, and
# faulting in its 4 KB pages cost more than filling them: a 64 x 224 px float batch (38.5 MB) took 29 ms on
# fresh pages and 8 ms with huge pages on the 2-core AVX2 AMD EPYC (warm-cache throughput 4.5-5x
# torchvision without, 6-8x with; training steps measured the same). THP_MEM_ALLOC_ENABLE=0 opts out.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
