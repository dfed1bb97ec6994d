"""Scoring the pipeline on datasets in the field's formats (``medseg-reasoning eval``).

- ``metrics``: mask Dice / IoU and the counts behind cIoU, box IoU, MedReasoner's point-pair Dice (pDice),
  normalized surface Dice (NSD) for 3D; plain numpy (+ scipy's distance transform for NSD).
- ``report``: the per-sample record, the summary (overall, per category, per dialogue round, per mode), and
  the report files (``summary.json``, ``summary.md``, PNG plots).
- ``layouts`` / ``runner``: dataset readers and the loop that produces the per-sample records.

Formulas and conventions: docs/evaluation.md. Nothing heavy is imported here; matplotlib is imported only
when plots are drawn.
"""
