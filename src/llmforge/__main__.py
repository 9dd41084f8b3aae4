"""`python -m llmforge` runs the CLI."""

from llmforge.cli import main

main()
