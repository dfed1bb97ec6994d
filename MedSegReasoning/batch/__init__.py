"""``medseg-reasoning batch``: one question over a whole cohort, each study through ``ask``'s round.

Modules: ``cohort`` (the studies, their questions and boxes, the series filter), ``study`` (one study on a worker
that loaded its models once), ``pool`` (Ray actors, or this process), ``store`` (the output folder, resume),
``report`` (results table and report.html), ``progress`` and ``command`` (the CLI's options and the run).
"""
