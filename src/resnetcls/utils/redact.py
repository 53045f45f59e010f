"""What may leave the user's machine or land in a file: passwords masked, local paths reduced to names.

mask_secrets() is the one masking function: every URL or DSN that is printed, logged, recorded (config.yaml,
environment.json, checkpoints, tracking.json, reports, study pages) or sent to a tracker goes through it (or
through mask_tree for a whole record). The unmasked URL is only ever handed to the driver that connects with
it (Optuna/SQLAlchemy, the MLflow client). Masked: the password of a URL's user info
(`postgresql+psycopg://tuner:***@db-host/tune`, `https://user:***@mlflow-host`) and `password=...`-style
pairs of a libpq key/value DSN or a query string (also `token=`, `api_key=`, `secret=`).

share_tree() reduces absolute local paths to their names for what is sent to a tracker when the user did not
ask for them (log.share_paths=false).
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import re
import shutil
import tempfile
from pathlib import Path, PurePosixPath, PureWindowsPath

MASK = "***"
# A URL's user info: scheme://user:PASSWORD@host. The password runs to the last "@" of the URL (a password may
# hold "/" or "@" unescaped; masking a little more is the safe side); a URL ends at white space or a quote.
_URL = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/?#@'\"<>]*):(?P<password>[^\s'\"<>]*)@")
_PAIR = re.compile(
    r"(?i)\b(?P<key>password|passwd|pwd|token|access_token|api_key|apikey|secret)"
    r"(?P<sep>\s*=\s*)(?P<value>'[^']*'|\"[^\"]*\"|[^\s&;'\"<>]+)"
)
_FILE_URI = re.compile(r"^(?P<scheme>sqlite|file)(?::/+)(?P<path>.+)$")


def mask_secrets(text: str) -> str:
    """text with every password of a URL or key/value DSN in it replaced by ***; the rest unchanged."""
    if not isinstance(text, str) or not text:
        return text
    text = _URL.sub(lambda m: f"{m['head']}:{MASK}@", text)
    return _PAIR.sub(lambda m: f"{m['key']}{m['sep']}{MASK}", text)


def error_line(error: BaseException, limit: int = 300) -> str:
    """An exception as one masked line for a message: the socket's own words where a client wrapped them in
    its retry story ("Connection refused"), else its first line."""
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    errno = re.findall(r"\[Errno -?\d+\] ([^\"')\]]+)", text)
    return mask_secrets(errno[-1].strip() if errno else text)[:limit]


def mask_tree(value):
    """A record (dicts, lists, tuples, strings, numbers) with mask_secrets applied to every string in it."""
    if isinstance(value, str):
        return mask_secrets(value)
    if isinstance(value, dict):
        return {k: mask_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(mask_tree(v) for v in value)
    return value


def is_masked(url: str) -> bool:
    """Whether url is a recorded (masked) URL: its password was replaced and cannot be used to connect."""
    return bool(url) and f":{MASK}@" in url


def without_user_info(url: str) -> str:
    """url without user:password@ (the driver then takes its credentials from the environment or files)."""
    return _URL.sub(lambda m: m["head"].split("://", 1)[0] + "://", url, count=1)


def _is_absolute(text: str) -> bool:
    return PurePosixPath(text).is_absolute() or PureWindowsPath(text).is_absolute()


def share_path(text: str) -> str:
    """An absolute local path reduced to its name (a file URI or SQLite URL to scheme:///NAME); else as is."""
    if not isinstance(text, str) or not text or "\n" in text:
        return text
    uri = _FILE_URI.match(text)
    if uri and _is_absolute("/" + uri["path"].lstrip("/")):
        return f"{uri['scheme']}:///{Path(uri['path']).name}"
    if _is_absolute(text):
        return (
            PureWindowsPath(text).name if PureWindowsPath(text).drive else os.path.basename(text.rstrip("/"))
        )
    return text


def share_tree(value):
    """A record with share_path applied to every string in it (what a tracker gets with
    log.share_paths=false)."""
    if isinstance(value, str):
        return share_path(value)
    if isinstance(value, dict):
        return {k: share_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(share_tree(v) for v in value)
    return value


def local_roots(paths, home: str | None = None) -> list[tuple[str, str]]:
    """(absolute folder, what it becomes) for share_text: each path's folder (a file's parent) becomes "" (its
    files become relative names), the home folder "~"; longest first, so the most specific root wins."""
    roots: dict[str, str] = {}
    for path in paths:
        uri = _FILE_URI.match(path) if isinstance(path, str) else None
        text = "/" + uri["path"].lstrip("/") if uri else path
        if not isinstance(text, str) or not text or not _is_absolute(text):
            continue
        folder = Path(text)
        folder = folder if not folder.suffix or folder.is_dir() else folder.parent
        for form in {str(folder), str(folder.resolve())}:
            if len(form) > 1:
                roots[form] = ""
    home = home if home is not None else os.path.expanduser("~")
    if home and home != "/" and home not in roots:
        roots[home] = "~"
    return sorted(roots.items(), key=lambda item: -len(item[0]))


def share_text(text: str, roots: list[tuple[str, str]]) -> str:
    """text (a report, a JSON file) with every path under one of roots made relative to it, also in the forms
    JSON and HTML escape it to."""
    for root, becomes in roots:
        bare = becomes or Path(root).name
        for form in {root, json.dumps(root)[1:-1], html.escape(root)}:
            text = re.sub(
                re.escape(form) + r"(/|(?![\w.\-]))",
                lambda m, becomes=becomes, bare=bare: (f"{becomes}/" if becomes else "") if m[1] else bare,
                text,
            )
    return text


def strings(tree) -> list[str]:
    """Every string in a record (dicts, lists, tuples)."""
    if isinstance(tree, dict):
        return [s for v in tree.values() for s in strings(v)]
    if isinstance(tree, (list, tuple)):
        return [s for v in tree for s in strings(v)]
    return [tree] if isinstance(tree, str) else []


TEXT_SUFFIXES = (".html", ".json", ".jsonl", ".csv", ".yaml", ".txt")


def copy_shared(src: Path, dst: Path, roots: list[tuple[str, str]]) -> Path:
    """src copied to dst as it may be sent: a text file (TEXT_SUFFIXES) with its passwords masked and its
    local paths made relative (share_text); any other file byte for byte."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.suffix in TEXT_SUFFIXES:
        dst.write_text(
            mask_secrets(share_text(src.read_text(encoding="utf-8", errors="replace"), roots)),
            encoding="utf-8",
        )
    else:
        shutil.copyfile(src, dst)
    return dst


@contextlib.contextmanager
def shared_folder(folder: Path, names: list[str], share_paths: bool, paths: list[str]):
    """A folder holding the files names (relative to folder) as they may be sent: folder itself when
    share_paths; else copies (copy_shared) in a temporary folder inside folder, removed after, whose text
    files name local files relative to folder or to the folders of paths (the run's data, from its config)."""
    if share_paths:
        yield folder
        return
    roots = local_roots([*paths, str(folder), str(Path(folder).absolute())])
    with tempfile.TemporaryDirectory(prefix=".tracker-", dir=folder) as tmp:
        for name in names:
            if (folder / name).is_file():
                copy_shared(folder / name, Path(tmp) / name, roots)
        yield Path(tmp)
