"""``python -m trio_worker`` runs the command line."""

from trio_worker._cli import main

main(prog_name="trio-worker")
