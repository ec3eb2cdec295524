"""`python -m maas_cli ...`: the `maas` command without its installed script."""

from maas_cli.cli import main

main()
