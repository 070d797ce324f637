"""`python -m dmalab` runs the `dmalab` command."""

from dmalab.cli import main

main(prog_name="dmalab")
