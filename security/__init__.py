"""security: differential privacy, watermarks, adversarial defences, safe loading.

May import only the leaf modules `headrace.errors` / `headrace.settings`.
"""
