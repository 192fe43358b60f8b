"""strop's distillation cycle: repo → harvest → scrub/split → sample → train → export → evaluate → registry.

Importing this package must stay cheap and torch-free: `strop serve` reads the registry through it.
"""
