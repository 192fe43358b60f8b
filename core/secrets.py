"""The secret rules: what strop never stores, trains on, evaluates with or puts in a prompt.

Serving (the completion log, the context of other documents) and distillation (harvest, split,
the log it reads back) apply the same rules, from here:
- `is_secret_file(path)`: files that hold credentials by their nature (.env, private keys, .netrc,
  ...). Decided on the path alone, so callers check it BEFORE reading: harvest and split never open
  such files, `strop serve` never completes inside one nor uses one as context for another.
- `redact(text)`: replaces secrets found inside ordinary files with `REDACTED`, keeping the code
  around them plausible (the string body goes, the quotes and the assignment stay);
  `redact_pieces(pieces)` does it for consecutive pieces of one text (a prefix, a completion, a
  suffix) so that a secret cut by a boundary is still found.

Standard library only, and importing neither `server` nor `distill`: both depend on it.

Detection is a table of named rules, highest priority first; a match that overlaps an earlier
rule's match is dropped. Hand-rolled rather than a library (detect-secrets, trufflehog) because it
needs only `re` and keeps serving/training dependencies at the standard library.

High-entropy tokens (rule `high_entropy`). Thresholds were chosen on random keys and on the
CPython 3.11 standard library (1,790 .py files, 31.5 MB, tests included), where they flag nothing
but base64/quoted-printable test data and one documented example token (secrets.py):
- a candidate is a maximal run of base64/base64url characters `[A-Za-z0-9+/=_-]`, ≥ 20 chars;
- a non-hex run must mix upper case, lower case and digits; have ≥ 0.40 word-like chunks per char
  (`chunk_density`: identifiers score ~0.3, random base64 ~0.55); have Shannon entropy ≥
  min(4.2, 0.78·log2(n)) bits/char (3.37 at n = 20; random base64 scores 3.65 at the 1st
  percentile for n = 20, 4.48 for n = 40); and not consist only of pieces (split at _ - / + =)
  that read as words (shorter than 8 chars or chunk density < 0.40), which spares snake_case names
  and paths. Recall on random 40-char base64 keys ~98%, 20-char ~91%;
- an all-hex run is a digest, a UUID part or a test vector far more often than a key, so it counts
  only when its line names a secret (password/secret/token/api key/credential/private key/auth)
  and its entropy is ≥ min(3.0, 0.8·log2(n)) bits/char (random hex scores 2.9 at the 1st
  percentile for n = 20, 3.3 for n = 32).
"""

from __future__ import annotations

import bisect
import fnmatch
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

REDACTED = "REDACTED"

# --- secret files ---------------------------------------------------------------------------------

# fnmatch patterns on the lower-cased file name.
SECRET_FILE_PATTERNS: tuple[str, ...] = (
    ".env", ".env.*", "*.env", ".envrc",
    "*.pem", "*.key", "*.p12", "*.pfx", "*.keystore", "*.jks", "*.ppk", "*.kdbx", "*.asc", "*.gpg",
    "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*",
    "credentials*", "secrets.*", "secret.*", "*.secret", "*.secrets",
    ".netrc", "_netrc", ".npmrc", ".pypirc", ".git-credentials", ".htpasswd", ".pgpass",
    ".dockercfg", "*.tfvars", "*.tfstate", "*.tfstate.backup",
)
# Directories whose whole content is credentials.
SECRET_DIRS = frozenset({".ssh", ".aws", ".gnupg", ".docker"})


def is_secret_file(path: str | PurePosixPath) -> bool:
    """True for files that hold credentials by their nature; decided on the path alone."""
    parts = PurePosixPath(str(path).replace("\\", "/")).parts
    if not parts:
        return False
    if any(part.lower() in SECRET_DIRS for part in parts[:-1]):
        return True
    name = parts[-1].lower()
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in SECRET_FILE_PATTERNS)


# --- secrets inside text --------------------------------------------------------------------------


@dataclass(frozen=True)
class Redaction:
    start: int  # character offsets into the scanned text, end exclusive
    end: int
    replacement: str
    rule: str


def _group(name: str) -> Callable[[re.Match], list[tuple[int, int, str]]]:
    """Replace one named group of the match with REDACTED."""

    def replace(m: re.Match) -> list[tuple[int, int, str]]:
        return [(m.start(name), m.end(name), REDACTED)]

    return replace


def _pem_body(m: re.Match) -> list[tuple[int, int, str]]:
    # Keep the separators that open and close the body (real newlines or "\n" escapes in a string)
    # so the BEGIN/END lines stay where they were.
    body = m.group("body")
    lead = re.match(r"(?:\s|\\n|\\r)*", body).group(0)
    trail = re.search(r"(?:\s|\\n|\\r|[\"'],?)*$", body).group(0)
    if len(lead) + len(trail) >= len(body):
        trail = ""
    if body[len(lead): len(body) - len(trail)] == REDACTED:
        return []
    return [(m.start("body"), m.end("body"), lead + REDACTED + trail)]


_SECRET_WORDS = frozenset({
    "password", "passwd", "pwd", "passphrase", "pass", "secret", "token", "apikey", "accesskey",
    "secretkey", "privatekey", "credential", "credentials",
})
_KEY_QUALIFIERS = frozenset({
    "api", "secret", "private", "access", "auth", "signing", "encryption", "master", "client", "app",
    "service",
})
_NAME_SPLIT = re.compile(r"[_\-.]+|(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def names_secret(name: str) -> bool:
    """Does an identifier name a secret? Judged by its last word: db_password, apiKey, GITHUB_TOKEN,
    SECRET_KEY yes; tokenizer_name, token_type, password_hash, key no."""
    words = [w.lower() for w in _NAME_SPLIT.split(name) if w]
    if not words:
        return False
    last = words[-1]
    if last in _SECRET_WORDS:
        return True
    return last == "key" and len(words) >= 2 and words[-2] in _KEY_QUALIFIERS


_PLACEHOLDER = re.compile(r"[{}$%<>*]|^(?:x+|\.+|-+|_+|none|null|nil|true|false|changeme|redacted)$", re.I)
_NUMBER = re.compile(r"[-+]?\d[\d_.]*(?:e[-+]?\d+)?", re.I)
_IDENT = re.compile(r"[A-Za-z_]\w*")
_DOTTED = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+")


def _quoted_assignment(m: re.Match) -> list[tuple[int, int, str]]:
    value = m.group("secret")
    if not names_secret(m.group("name")) or _PLACEHOLDER.search(value) or value == REDACTED:
        return []
    if _IDENT.fullmatch(value) and value.isupper():  # TOKEN = "NAME": a constant naming a token kind
        return []
    return [(m.start("secret"), m.end("secret"), REDACTED)]


def _bare_assignment(m: re.Match) -> list[tuple[int, int, str]]:
    """`KEY=value` / `key: value` lines of .env, shell, YAML, INI, Dockerfiles."""
    value = m.group("secret")
    if not names_secret(m.group("name")) or len(value) < 6 or value == REDACTED:
        return []
    if _PLACEHOLDER.search(value) or _NUMBER.fullmatch(value) or _DOTTED.fullmatch(value):
        return []
    if any(c in value for c in "()[]"):
        return []  # a call or subscript: code, not a literal
    if m.group("rest").lstrip().startswith(("=", ":")):
        return []  # `token: str = ...`, an annotation
    sep = m.group("sep")
    reads_variable = "=" in sep and sep.strip() != sep  # `password = other_name` in code
    if _IDENT.fullmatch(value) and (reads_variable or not any(c.isdigit() for c in value)):
        return []  # a name, not a literal; `PASSWORD=letmein2` and `password: hunter2` stay literals
    return [(m.start("secret"), m.end("secret"), REDACTED)]


def _needs_digit(group: str) -> Callable[[re.Match], list[tuple[int, int, str]]]:
    def replace(m: re.Match) -> list[tuple[int, int, str]]:
        if not any(c.isdigit() for c in m.group(group)):
            return []
        return [(m.start(group), m.end(group), REDACTED)]

    return replace


def shannon_entropy(s: str) -> float:
    """Bits per character of the empirical distribution of `s`'s characters."""
    n = len(s)
    if n == 0:
        return 0.0
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values())


def _base64_threshold(n: int) -> float:
    return min(4.2, 0.78 * math.log2(n))


_CHUNK = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+|[^A-Za-z\d]+")


def chunk_density(s: str) -> float:
    """Word-like chunks (Words, lower, UPPER, digits, punctuation runs) per character.

    Identifiers and paths are made of words (testCmsgTruncLen2Minus1: 7 chunks / 23 chars = 0.30);
    random base64 switches character class every ~2 chars (median 0.55).
    """
    return len(_CHUNK.findall(s)) / len(s) if s else 0.0


def _hex_threshold(n: int) -> float:
    return min(3.0, 0.8 * math.log2(n))


_MIN_CHUNK_DENSITY = 0.40
_SEPARATORS = re.compile(r"[_\-/+=]+")
_HEX = re.compile(r"[0-9a-fA-F]+")
_LINE_NAMES_SECRET = re.compile(
    r"passw|passphrase|secret|token|api[_\-]?key|apikey|credential|private[_\-]?key|auth", re.I
)


def _high_entropy(m: re.Match, text: str) -> list[tuple[int, int, str]]:
    run = m.group(0).strip("=")
    if REDACTED in run:
        return []
    n = len(run)
    if _HEX.fullmatch(run):
        line_start = text.rfind("\n", 0, m.start()) + 1
        line_end = text.find("\n", m.end())
        line = text[line_start: line_end if line_end >= 0 else len(text)]
        if not _LINE_NAMES_SECRET.search(line) or shannon_entropy(run) < _hex_threshold(n):
            return []
    else:
        if not (any(c.isupper() for c in run) and any(c.islower() for c in run)
                and any(c.isdigit() for c in run)):
            return []
        if chunk_density(run) < _MIN_CHUNK_DENSITY or shannon_entropy(run) < _base64_threshold(n):
            return []
        if all(len(seg) < 8 or chunk_density(seg) < _MIN_CHUNK_DENSITY for seg in _SEPARATORS.split(run)):
            return []  # snake_case_64_names, paths/like/this-1987: every piece reads as words
    return [(m.start(), m.start() + len(m.group(0).rstrip("=")), REDACTED)]


@dataclass(frozen=True)
class Rule:
    name: str
    pattern: re.Pattern
    replace: Callable[..., list[tuple[int, int, str]]]
    needs_text: bool = False  # replace(match, text) instead of replace(match)


_ASSIGN_OP = r"(?:=|:=|=>|:|\?\?=|\|\|=)"

# Patterns start with a literal where they can (a boundary check follows as a lookbehind): Python's
# re then skips ahead with a fast substring search instead of trying every position.
RULES: tuple[Rule, ...] = (
    Rule("pem_private_key", re.compile(
        r"-----BEGIN[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----(?P<body>.*?)"
        r"(?:-----END[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----|\Z)", re.S), _pem_body),
    Rule("url_credentials", re.compile(
        r"://[^\s:/@'\"<>]{1,256}:(?P<secret>[^\s@/'\"<>{}$%]{1,256})@"),
        lambda m: [] if m.group("secret") == REDACTED else [(m.start("secret"), m.end("secret"), REDACTED)]),
    Rule("aws_access_key_id", re.compile(
        r"(?P<secret>A(?:KIA|SIA|BIA|CCA|GPA|IDA|ROA|IPA|NPA|NVA|PKA|3T[A-Z0-9])(?<![A-Za-z0-9]....)"
        r"[A-Z0-9]{16})(?![A-Za-z0-9])"), _group("secret")),
    Rule("aws_secret_access_key", re.compile(
        r"(?i)aws[\w.\-]{0,30}?(?:secret|private)[\w.\-]{0,30}['\"]?[ \t]*" + _ASSIGN_OP +
        r"[ \t]*['\"]?(?P<secret>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])"), _group("secret")),
    Rule("github_token", re.compile(
        r"(?P<secret>gh[pousr]_(?<![A-Za-z0-9_]gh._)[A-Za-z0-9]{36,255}"
        r"|github_pat_(?<![A-Za-z0-9_]github_pat_)[A-Za-z0-9_]{22,255})(?![A-Za-z0-9_])"), _group("secret")),
    Rule("slack_token", re.compile(r"(?P<secret>xox[abposr]-(?<![A-Za-z0-9_]xox.-)[A-Za-z0-9\-]{10,250})"),
         _group("secret")),
    Rule("slack_webhook", re.compile(
        r"hooks\.slack\.com/services/(?P<secret>[A-Za-z0-9_/]{20,})"), _group("secret")),
    Rule("google_api_key", re.compile(
        r"(?P<secret>AIza(?<![A-Za-z0-9_]AIza)[0-9A-Za-z_\-]{35})(?![0-9A-Za-z_\-])"), _group("secret")),
    Rule("stripe_key", re.compile(
        r"(?P<secret>[sr]k_(?:live|test)_(?<![A-Za-z0-9_].k_live_)(?<![A-Za-z0-9_].k_test_)"
        r"[0-9A-Za-z]{10,247})(?![A-Za-z0-9_])"), _group("secret")),
    Rule("openai_style_key", re.compile(
        r"(?P<secret>sk-(?<![A-Za-z0-9_]sk-)(?:proj-|svcacct-|admin-|ant-)?[A-Za-z0-9_\-]{20,250})"),
        _needs_digit("secret")),
    Rule("jwt", re.compile(
        r"(?P<secret>eyJ(?<![A-Za-z0-9_\-]eyJ)[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*)"),
        _group("secret")),
    # Possessive name and [ \t] instead of \s: one attempt per identifier, never across lines.
    Rule("secret_assignment", re.compile(
        r"(?<![\w.\-])(?P<name>[A-Za-z_][\w.\-]{0,80}+)['\"]?[ \t]*+(?::[ \t]*[\w\[\], |.]{1,40}?[ \t]*)?"
        + _ASSIGN_OP + r"[ \t]*(?:[rbuRBU]{0,2})(?P<q>['\"`])(?P<secret>[^'\"`\s\\]{4,300})(?P=q)"),
        _quoted_assignment),
    Rule("secret_config_line", re.compile(
        r"(?m)^[ \t]*(?:export[ \t]+|ENV[ \t]+)?(?P<name>[A-Za-z_][\w.\-]{0,80})(?P<sep>[ \t]*[=:][ \t]*)"
        r"(?P<secret>[^\s'\"#`][^\s'\"#`,;]{0,300})(?P<rest>[^\n]*)"), _bare_assignment),
    Rule("high_entropy", re.compile(r"[A-Za-z0-9+/=_\-]{20,}"), _high_entropy, needs_text=True),
)


def find_secrets(text: str, rules: Iterable[Rule] = RULES) -> list[Redaction]:
    """Non-overlapping redactions for `text`, sorted by position."""
    taken: list[Redaction] = []  # kept sorted by start; they never overlap
    for rule in rules:
        for m in rule.pattern.finditer(text):
            spans = rule.replace(m, text) if rule.needs_text else rule.replace(m)
            for start, end, replacement in spans:
                i = bisect.bisect_left(taken, start, key=lambda r: r.start)
                if start >= end or (i > 0 and taken[i - 1].end > start) or (
                        i < len(taken) and taken[i].start < end):
                    continue
                taken.insert(i, Redaction(start, end, replacement, rule.name))
    return taken


def apply_redactions(text: str, redactions: Iterable[Redaction], offset: int = 0) -> str:
    """`text` is the slice of the scanned text starting at `offset`; redactions wholly inside it apply.

    Callers cut a scanned text into pieces (prefix / hole / suffix) at positions no redaction
    straddles, then apply the redactions to each piece; `offset` is the piece's start.
    """
    out: list[str] = []
    pos = 0
    end_of_piece = offset + len(text)
    for r in redactions:
        if r.start < offset or r.end > end_of_piece:
            continue
        out.append(text[pos: r.start - offset])
        out.append(r.replacement)
        pos = r.end - offset
    out.append(text[pos:])
    return "".join(out)


def redact(text: str) -> tuple[str, int]:
    """`text` with every secret found replaced by REDACTED, and how many were replaced."""
    found = find_secrets(text)
    if not found:
        return text, 0
    return apply_redactions(text, found), len(found)


def redact_pieces(pieces: Sequence[str]) -> list[str]:
    """Redact consecutive pieces of one text (prefix, completion, suffix) as the whole text would be.

    A secret that a boundary cuts (the cursor inside a key) is found in the joined text; each piece
    loses its part of it (`REDACTED` in the piece where the secret starts, nothing in the others)."""
    joined = "".join(pieces)
    found = find_secrets(joined)
    if not found:
        return list(pieces)
    out, start = [], 0
    for piece in pieces:
        end = start + len(piece)
        parts, pos = [], start
        for r in found:
            lo, hi = max(r.start, start), min(r.end, end)
            if lo < hi:
                parts += [joined[pos:lo], r.replacement if r.start >= start else ""]
                pos = hi
        parts.append(joined[pos:end])
        out.append("".join(parts))
        start = end
    return out
