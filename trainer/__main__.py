"""`python -m trainer`: the same as the `trainer` command."""

from trainer.cli.app import main

main()
