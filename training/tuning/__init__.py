"""Hyper-parameter tuning: search spaces, the trial objective, NNI experiments.

`search_space` (NNI-format spaces, validated) and `objective` (one trial through
the training recipe, archived) have no NNI dependency; `nni_experiment` is the
one wrapper around `nni.experiment.Experiment`, and `nni_trial` is the module
NNI's trial processes run. May import what `training` may import.
"""
