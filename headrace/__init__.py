"""headrace: the product's face — the `headrace` CLI, settings and demo wiring.

May import `streams`, `serving`, `training` and `security`. Two leaf modules,
`headrace.errors` (the one error tree) and `headrace.settings` (environment
settings), import nothing from the project, so every package may use them.
"""

__version__ = "0.1.0"
