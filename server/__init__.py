"""strop's serving side: LSP handlers → context/prompt → engine → post-processing → completion log."""

__version__ = "0.1.0"
