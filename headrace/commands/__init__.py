"""One module per CLI command group; `headrace.cli` assembles them."""
