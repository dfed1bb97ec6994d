"""MedSegReasoning: reasoning segmentation of medical volumes (engine, backend and Slicer-side helpers).

Importing the package is cheap on purpose: the Slicer module imports parts of it, and Slicer must never
pull in torch. Heavy modules (models, readers) are imported where they are used.
"""

from __future__ import annotations

__version__ = "0.1.0"
PROG = "medseg-reasoning"  # the command's name, in its messages

__all__ = ["PROG", "__version__"]
