"""`python -m bench`: run every benchmark and print one table."""

from . import core
from .timing import print_table

if __name__ == "__main__":
    print_table(core.run())
