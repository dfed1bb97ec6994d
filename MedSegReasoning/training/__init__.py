"""Teach the reasoner: rewards (``rewards``), and later the SFT/GRPO trainers that use them.

Nothing here imports torch, transformers or TRL at module level: ``ask`` and the Slicer side never pay for
training code they do not run.
"""
