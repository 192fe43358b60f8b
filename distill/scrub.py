"""Keep secrets out of everything strop trains on or evaluates with.

The rules live in `core.secrets`, shared with serving (the completion log applies them before it
stores anything); the distillation uses them from here: harvest and split check `is_secret_file`
on a path before opening it, and redact what they read from files and from the log.
"""

from core.secrets import (
    REDACTED,
    RULES,
    Redaction,
    Rule,
    apply_redactions,
    chunk_density,
    find_secrets,
    is_secret_file,
    names_secret,
    redact,
    redact_pieces,
    shannon_entropy,
)

__all__ = ["REDACTED", "RULES", "Redaction", "Rule", "apply_redactions", "chunk_density", "find_secrets",
           "is_secret_file", "names_secret", "redact", "redact_pieces", "shannon_entropy"]
