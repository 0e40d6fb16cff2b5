"""PixPro with optical flow: model, sample pipeline, trainer, transfer and evaluation.

Importing this package is cheap (no torch import); subcommands load what they need.
"""

__version__ = "0.1.0"
