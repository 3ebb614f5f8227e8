"""`python -m llmforge` (also what `torchrun -m llmforge train ...` runs)."""

from llmforge.cli.app import main

if __name__ == "__main__":
    main()
