"""Allow ``python -m splitdnn``."""

from splitdnn.cli import main

main()
