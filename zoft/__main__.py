"""`python -m zoft` (and `torchrun -m zoft`) enter the same CLI as the `zoft` script."""

from zoft.cli import main

if __name__ == "__main__":
    main()
