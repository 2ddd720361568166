"""`python -m headrace` runs the CLI."""

from headrace.cli import main

main()
