"""The `spindle` command of an installed package: the controller binary
shipped inside it."""

import os
import sys

BINARY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bin", "spindle")


def main():
    os.execv(BINARY, [BINARY] + sys.argv[1:])
