"""Teach the reasoner: ``medseg-reasoning train sft|grpo`` on TRL and peft, with this project's readers and rewards.

Modules: ``command`` (the CLI subcommand), ``config`` (the settings file), ``samples`` (training samples from the
``eval`` layouts, rendered by the runtime's views), ``targets`` (the answers SFT teaches), ``rewards`` (MedReasoner's
rewards and ours), ``reward_funcs`` (the rewards in TRL's signature), ``sft`` and ``grpo`` (the trainers), ``runner``
(what both share), ``checkpoint`` (the output folder) and ``logs`` (logs.jsonl and curves.png).

Nothing here imports torch, transformers or TRL at module level: ``ask`` and the Slicer side never pay for
training code they do not run.
"""
