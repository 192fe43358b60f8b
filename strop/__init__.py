"""The `strop` command: one console script over the two sides (`server`, `distill`), which never import
each other. Only the side a command needs is imported: `strop serve` loads no training code."""
