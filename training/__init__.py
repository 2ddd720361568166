"""training: datasets, preprocessing, models, gradient check, training loop, ONNX export.

May import `serving` (to publish models), `security` and the leaf modules
`headrace.errors` / `headrace.settings`.
"""
