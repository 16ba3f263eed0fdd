"""``python -m asyncddp`` is the ``asyncddp`` command."""

from asyncddp.cli.main import main

if __name__ == "__main__":
    main()
