"""`python -m eventkeep` runs the command line, as the `eventkeep` script does."""

from eventkeep.api.cli import app

app(prog_name="eventkeep")
