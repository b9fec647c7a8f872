"""`python -m ambiseg` (also what `torchrun -m ambiseg` runs)."""

from .cli import main

main()
