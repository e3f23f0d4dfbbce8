"""Make a saved MM1 folder loadable by plain `transformers`, without this package installed.

`export_remote_code(folder)` writes the modelling code beside the weights, as Hugging Face "remote code":
MM1Config's `auto_map` (configuration.AUTO_MAP) and the processor's point the Auto classes at these files, so

    AutoConfig / AutoModelForImageTextToText / AutoProcessor .from_pretrained(folder, trust_remote_code=True)

work in a process where `import mm1` fails. transformers copies a remote module and the files it imports
relatively (`from .x import y`, one level, found by a regex in transformers.dynamic_module_utils) into its
module cache, and checks that every other import is an installed package. So the sources are copied as they
are, flattened to one folder, with each `from mm1.a.b import names` rewritten to `from .b import names`: the
exported code is the package's own code, never a second copy to keep in step. The files needed are found by
following those imports from ROOTS; they must import names (`from mm1.data.chat import IMAGE`), not modules
(`from mm1.data import chat`, which the regex cannot see). mm1.storage (pyarrow filesystems) is replaced by a
local-disk stand-in: an exported folder reads image paths from the local disk only.

The output depends on the sources only (no timestamps), so two saves write identical bytes.
"""

from __future__ import annotations

import ast
from pathlib import Path

# The modules the auto_map names; everything they import from mm1 follows.
ROOTS = ("mm1.model.configuration", "mm1.model.modeling", "mm1.model.processing")

# Modules replaced by a small stand-in in the exported folder: name -> source.
SHIMS = {
    "mm1.storage": '''"""Stand-in for mm1.storage in an exported MM1 folder: locations are paths on the local disk."""

from pathlib import Path


def read_bytes(location: str) -> bytes:
    return Path(location).read_bytes()
''',
}

PACKAGE = "mm1"
_SOURCE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding the mm1 package
HEADER = (
    "# Exported from {path} by mm1.model.remote_code.export_remote_code; edit that file, not this copy.\n"
)


def _source(module: str) -> Path:
    return _SOURCE_ROOT / (module.replace(".", "/") + ".py")


def _is_ours(module: str | None) -> bool:
    return module is not None and module.split(".")[0] == PACKAGE


def _flat_name(module: str) -> str:
    return module.rsplit(".", 1)[-1]


def _rewrite(module: str) -> tuple[str, list[str]]:
    """The source of `module` with its mm1 imports made relative, and the mm1 modules it imports."""
    path = _source(module)
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    edits: list[tuple[int, int, str]] = []
    needed: list[str] = []
    for node in ast.walk(ast.parse(text, filename=str(path))):
        where = f"{path.relative_to(_SOURCE_ROOT)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import) and any(_is_ours(alias.name) for alias in node.names):
            raise ValueError(f"{where}: `import {PACKAGE}...` cannot be exported; import names from a module")
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            raise ValueError(
                f"{where}: relative imports cannot be exported; use `from {PACKAGE}.x.y import name`"
            )
        if not _is_ours(node.module):
            continue
        target = node.module
        if target not in SHIMS and not _source(target).is_file():
            raise ValueError(
                f"{where}: `from {target} import ...` imports a package; import from its module file"
            )
        for alias in node.names:
            if _source(f"{target}.{alias.name}").is_file() or f"{target}.{alias.name}" in SHIMS:
                raise ValueError(
                    f"{where}: `from {target} import {alias.name}` imports a module, which transformers does not "
                    f"copy as remote code; import the names it uses (`from {target}.{alias.name} import ...`)"
                )
        names = ", ".join(a.name if a.asname is None else f"{a.name} as {a.asname}" for a in node.names)
        indent = " " * node.col_offset
        edits.append(
            (node.lineno - 1, node.end_lineno, f"{indent}from .{_flat_name(target)} import {names}\n")
        )
        needed.append(target)
    for start, end, replacement in sorted(edits, reverse=True):
        lines[start:end] = [replacement]
    return HEADER.format(path=path.relative_to(_SOURCE_ROOT).as_posix()) + "".join(lines), needed


def remote_code_files() -> dict[str, str]:
    """File name -> source of every module the exported folder needs, sorted by name."""
    files: dict[str, str] = {}
    origin: dict[str, str] = {}
    queue = list(ROOTS)
    while queue:
        module = queue.pop(0)
        name = _flat_name(module) + ".py"
        if name in origin:
            if origin[name] != module:
                raise ValueError(f"{origin[name]} and {module} would both be exported as {name}; rename one")
            continue
        if module in SHIMS:
            text, needed = SHIMS[module], []
        else:
            text, needed = _rewrite(module)
        files[name], origin[name] = text, module
        queue += needed
    return dict(sorted(files.items()))


def export_remote_code(folder: str | Path) -> list[Path]:
    """Write the modelling code into `folder` (a saved checkpoint); returns the files written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in remote_code_files().items():
        path = folder / name
        path.write_bytes(text.encode("utf-8"))
        written.append(path)
    return written
