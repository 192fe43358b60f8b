"""core/languages.py: the one language table (core/languages.toml) that serving, file selection and
prompt layout read."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from core import languages
from core.fim import Snippet, layout
from core.languages import LANGUAGE_BY_EXTENSION, language_of, line_comment

# The table server/lsp.py had before the two were merged: none of it may be lost.
SERVER_TABLE = {
    ".py": "python", ".js": "javascript", ".jsx": "javascriptreact", ".ts": "typescript", ".tsx": "typescriptreact",
    ".go": "go", ".rs": "rust", ".java": "java", ".c": "c", ".h": "c", ".cc": "cpp", ".cpp": "cpp", ".hpp": "cpp",
    ".cs": "csharp", ".rb": "ruby", ".php": "php", ".lua": "lua", ".sh": "shellscript", ".kt": "kotlin",
    ".swift": "swift", ".scala": "scala", ".sql": "sql", ".md": "markdown", ".json": "json", ".yaml": "yaml",
    ".yml": "yaml", ".toml": "toml", ".html": "html", ".css": "css",
}


def test_the_table_keeps_every_extension_the_server_knew():
    assert {ext: LANGUAGE_BY_EXTENSION.get(ext) for ext in SERVER_TABLE} == SERVER_TABLE
    assert len(LANGUAGE_BY_EXTENSION) >= 76  # harvest's table had 76 suffixes
    assert all(ext.startswith(".") and ext == ext.lower() for ext in LANGUAGE_BY_EXTENSION)


@pytest.mark.parametrize("path, language", [
    ("src/a.PY", "python"), ("Makefile", "makefile"), ("pkg/CMakeLists.txt", "cmake"), ("Gemfile", "ruby"),
    ("a.mm", "objective-cpp"), ("notes.txt", None), ("LICENSE", None),
])
def test_language_of(path, language):
    assert language_of(path) == language


def test_line_comment_markers():
    assert [line_comment(x) for x in ("python", "lua", "haskell", "go", "plaintext", "erlang")] == \
        ["#", "--", "--", "//", "//", "%"]


def test_prefix_only_layout_marks_snippet_paths_with_the_tables_comment():
    pieces = layout(None, "x = 1\n", "", snippets=[Snippet("lib/util.lua", "local M = {}")], path="a.lua",
                    language="lua")
    assert pieces == ["-- lib/util.lua\nlocal M = {}\n-- a.lua\n", "x = 1\n"]


def test_a_suffix_listed_for_two_languages_is_refused():
    with pytest.raises(ValueError, match=r"'\.h' is listed for both 'c' and 'cpp'"):
        languages._index({"c": {"extensions": [".h"]}, "cpp": {"extensions": [".H"]}}, "extensions", str.lower)


def test_server_falls_back_to_the_table_when_the_client_sends_no_language_id():
    from server.config import ServeConfig
    from server.lsp import StropServer

    ls = StropServer(ServeConfig())
    assert ls.language("file:///r/src/app.tsx", None) == "typescriptreact"
    assert ls.language("file:///r/My%20Makefile.d/Makefile", "") == "makefile"
    assert ls.language("file:///r/bin/tool", None, "#!/usr/bin/env python3\n") == "python"
    assert ls.language("file:///r/notes.txt", None) == "plaintext"
    assert ls.language("file:///r/a.py", "django-python") == "django-python"  # the client's id wins


@pytest.mark.slow
def test_the_table_ships_in_the_wheel(tmp_path):
    root = Path(__file__).resolve().parents[1]
    src = tmp_path / "src"  # a copy: building in place would leave build/ and *.egg-info behind
    for name in ("pyproject.toml", "README.md"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / name, src / name)
    for package in ("core", "server", "distill", "strop"):
        shutil.copytree(root / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("strop-*.whl")
    assert "core/languages.toml" in zipfile.ZipFile(wheel).namelist()
