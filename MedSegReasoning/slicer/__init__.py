"""The Slicer side of MedSegReasoning: scene writing and the chat panel.

Nothing here imports torch or the engine's models. ``scene`` needs Slicer's MRML (the Slicer application or the
``slicer-core`` wheel); ``chat_panel`` needs a Qt binding (Slicer's PythonQt ``qt`` or PySide). Neither is imported
by this ``__init__``, so importing the package stays free.
"""

from __future__ import annotations

__all__: list[str] = []
