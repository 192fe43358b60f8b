"""core.secrets: the rules serving and distillation share; redact_pieces finds a secret that a
piece boundary (the cursor) cuts in two."""

import subprocess
import sys

from core.secrets import REDACTED, redact, redact_pieces

AWS_ID = "AKIA" + "Q7X3T5LZ2M4N6P8R"  # built at runtime: no literal for secret scanners
GH = "gh" + "p_" + "R8d2Kq7Lm3Xz9Tb4Wn6Yc1Vf5Hs0Jp2Ga7Qe"


def test_a_key_cut_by_the_cursor_is_redacted_on_both_sides():
    text = f'key = "{AWS_ID}"\n'
    cut = text.index(AWS_ID) + 7
    prefix, completion, suffix = redact_pieces([text[:cut], "", text[cut:]])
    assert AWS_ID[:7] not in prefix and AWS_ID[7:] not in suffix
    assert prefix == 'key = "' + REDACTED and suffix == '"\n' and completion == ""


def test_pieces_match_redacting_the_whole_text():
    text = f'a = 1\ntoken = "{GH}"\nb = 2\n'
    for cut in range(0, len(text), 3):
        for cut2 in range(cut, len(text), 7):
            pieces = redact_pieces([text[:cut], text[cut:cut2], text[cut2:]])
            assert "".join(pieces) == redact(text)[0]  # wherever the cuts fall
            assert all(GH[:6] not in p and GH[-6:] not in p for p in pieces)
    assert redact_pieces(["x = 1", "\n", "y = 2"]) == ["x = 1", "\n", "y = 2"]


def test_core_imports_neither_server_nor_distill():
    code = "import sys, core.secrets, core.private; print(any(m.split('.')[0] in ('server', 'distill') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
