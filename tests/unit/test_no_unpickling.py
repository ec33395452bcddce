"""No code path unpickles: no pickle / joblib / dill imports, no torch.load without weights_only=True,
no numpy load with allow_pickle=True, in the server, the plugins, the registry or the examples."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("server", "plugins", "registry", "examples", "bench")
UNPICKLING_MODULES = {"pickle", "cPickle", "_pickle", "joblib", "dill", "cloudpickle", "shelve", "marshal"}


def unpickling_calls(source: str, filename: str = "<src>") -> list[str]:
    """Each line of `source` that imports an unpickling module or loads with pickle enabled."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            names = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [(node.module or "").split(".")[0]]
        else:
            names = []
        found += [f"{filename}:{node.lineno}: imports {n}" for n in names if n in UNPICKLING_MODULES]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
            keywords = {k.arg: k.value for k in node.keywords}
            if owner == "torch" and node.func.attr == "load":
                safe = keywords.get("weights_only")
                if not (isinstance(safe, ast.Constant) and safe.value is True):
                    found.append(f"{filename}:{node.lineno}: torch.load without weights_only=True")
            if owner in ("np", "numpy") and node.func.attr == "load":
                unsafe = keywords.get("allow_pickle")
                # allow_pickle=True, or any value not known to be False at a glance
                if unsafe is not None and not (isinstance(unsafe, ast.Constant) and unsafe.value is False):
                    found.append(f"{filename}:{node.lineno}: numpy load with allow_pickle")
    return found


def test_the_scanner_finds_each_kind():
    source = (
        "import pickle\nfrom joblib import load\nimport torch\nimport numpy as np\n"
        "torch.load('w.pt')\ntorch.load('w.pt', weights_only=False)\ntorch.load('w.pt', weights_only=True)\n"
        "np.load('a.npy', allow_pickle=True)\nnp.load('a.npy')\n"
    )
    assert [line.split(": ", 1)[1] for line in unpickling_calls(source)] == [
        "imports pickle", "imports joblib", "torch.load without weights_only=True",
        "torch.load without weights_only=True", "numpy load with allow_pickle",
    ]  # fmt: skip


def test_no_code_path_unpickles():
    files = [p for d in SCANNED for p in (ROOT / d).rglob("*.py") if "/build/" not in str(p) and ".venv" not in p.parts]
    assert len(files) > 50, "the scan found too few files to be meaningful"
    found = [hit for path in files for hit in unpickling_calls(path.read_text(), str(path.relative_to(ROOT)))]
    assert not found, "\n".join(found)
