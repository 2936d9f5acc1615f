import sys

from llamagen.cli import command

sys.exit(command())
