"""The experiments shipped with hooklab, one module each; each registers one
:class:`~hooklab.experiment.Experiment` when imported (the registry imports them all)."""
