"""ambiseg's version, in a module of its own: the CLI's `--version`, checkpoints and records read it
without importing the package's API (and with it torch)."""

__version__ = "0.1.0"
