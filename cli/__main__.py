"""``python -m sensitivity.cli``: the ``sensitivity`` command (what Slurm array scripts run)."""

from .main import main

main(prog_name="sensitivity")
