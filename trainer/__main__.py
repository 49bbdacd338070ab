"""`python -m trainer CONFIG [...]` = `reg train CONFIG [...]`; lets `accelerate launch -m trainer` run it."""

import sys

from cli.main import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
