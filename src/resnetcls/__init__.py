"""resnetcls: train, evaluate, explain, export and serve ResNet image classifiers."""
__version__ = "0.1.0"
