"""security: differential privacy, watermarks, adversarial defences, safe loading.

The core modules import only the leaf modules `headrace.errors` /
`headrace.settings` (and torch, numpy, onnx, opacus). Exception: the
watermark's integration modules (`watermark/hook.py`, `embed.py`,
`oracles.py`, `weights.py`) build on `training` and `serving`; `training`
imports them lazily, inside `training.hooks.build_hooks`, so no import cycle
forms at load time. The privacy and adversarial training hooks live in
`training/` instead.
"""
