"""What both processes share: the Slicer side and the backend server speak through these modules only.

Numpy and the standard library only (no torch, no FastAPI, no SimpleITK), and nothing else of the package: the
wire sits below every other layer (the import-linter contracts in pyproject.toml enforce it, and
``Testing/integration/test_architecture.py`` runs them). One job per module:

- ``errors``: the user-facing ``MedSegError`` family (exit codes) and the client's ``ClientError`` family;
- ``geometry``: ``[k, j, i]`` arrays in LPS (``Geometry``), plane orientations;
- ``hashing``: the one volume content hash;
- ``masks``: ``CompactMask`` (bounding box + packed bits) and its digests;
- ``headers``: the API prefix, HTTP header names and the server's ready line;
- ``version``: the wire versions each side speaks, their headers, the one sentence for a mismatch;
- ``events``: entities, a round's events and result as the client receives them, the event-stream parser;
- ``session_archive``: a saved session as one zip, checked before it is unpacked;
- ``transport`` and ``client``: ``MedSegClient``, every endpoint of the server over ``http.client``;
- ``process``: ``LocalServer`` (start-or-connect), ``kill_tree``; ``childenv``: a child Python's environment;
- ``network``: the one loopback test; ``filelinks``: a series's files in one folder (both sides hand one to a reader).

Importing this package imports none of them, so each user pays only for what it uses.
"""

from __future__ import annotations

__all__: list[str] = []
