"""Dataset layouts for ``medseg-reasoning eval``: each reader turns its format into the same ``Case``/``Turn`` objects.

Three layouts (``docs/evaluation.md``, "Datasets and modes", says what was verified against the published code):

- ``umrg``: MedReasoner's U-MRG-14K as parquet (the verl/EasyR1 RL format): ``images`` and ``masks`` (lists of
  ``{"bytes", "path"}`` image structs, the first of each is used), ``prompt`` (a chat list whose first message's
  ``content`` is the question), ``reward_model.ground_truth`` (a JSON string with ``bbox_2d`` and ``point_2d``),
  ``extra_info`` (``id``, ``category``, ``supercategory``). One question per row, 2D.
- ``mrmedseg``: MediRound's MR-MedSeg dialogues: a JSON list of ``{"task", "conversations": [...]}``; human turns
  carry ``[IMAGE256:path]`` (the image) and ``[MASK-ENCODE:path][BOX-ENCODE:path]`` (an earlier round's output
  the question refers to, ``ind`` its 0-based round), gpt turns ``[MASK-DECODE:path]`` (the truth of the round).
- ``folder``: 3D (or 2D) volumes beside label maps and a ``questions.jsonl`` (one line per question: ``volume``,
  ``labels``, ``question``, ``label`` value; optional ``id``, ``name``, ``category``, ``round``, ``reference``,
  ``dialogue``).

Readers index the dataset cheaply (ids, question text) and decode images or volumes only in ``Unit.load()``, so a
resumed run skips finished samples without reading their pixels, and a broken sample fails alone.

Modules: ``units`` (the types every reader produces, 2D images as volumes), ``detect`` (``open_dataset``), and one
reader per layout: ``umrg``, ``mrmedseg``, ``folder``.
"""

from .detect import LAYOUTS, detect_layout, open_dataset
from .folder import read_folder
from .mrmedseg import read_mrmedseg
from .umrg import read_umrg
from .units import QUESTIONS_FILE, Case, Dataset, Turn, Unit, decode_image, decode_mask, image_volume

__all__ = [
    "LAYOUTS",
    "QUESTIONS_FILE",
    "Case",
    "Dataset",
    "Turn",
    "Unit",
    "decode_image",
    "decode_mask",
    "detect_layout",
    "image_volume",
    "open_dataset",
    "read_folder",
    "read_mrmedseg",
    "read_umrg",
]
