"""Distributed training on Ray: allreduce (DDP), parameter server, hybrid, gradient compression.

`DistributedConfig` (the job spec's `distributed:` section) lives in `config.py`.
"""
