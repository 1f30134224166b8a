"""`python -m vlmkd` (what `torchrun -m vlmkd ...` runs)."""

from vlmkd.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
