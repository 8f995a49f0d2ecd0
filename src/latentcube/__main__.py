"""``python -m latentcube`` runs the command line."""

from latentcube.cli import app

app()
