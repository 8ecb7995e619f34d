"""nerveseg: command-line toolkit for 2D medical image segmentation competitions."""

__version__ = "0.1.0"
