"""Write tests/data/cucim_api.json: the public functions of the cuCIM ``skimage`` submodules the
device path uses and their keyword parameters, read from a cuCIM wheel's sources (no GPU and no
import needed), for the fake cuCIM (tests/fake_cupy.py) to refuse what the real one lacks.

    python tests/cucim_api_dump.py .whl/cucim_cu13-*.whl
"""

from __future__ import annotations

import ast
import json
import sys
import zipfile
from pathlib import Path

SUBMODULES = ("filters", "feature", "segmentation", "transform", "measure", "morphology", "util")


def _exports(texts: list[str]) -> dict[str, str | None]:
    """name -> relative module it is imported from (``__all__`` where given, else every import)."""
    names: set[str] = set()
    src: dict[str, str | None] = {}
    for text in texts:
        for node in ast.parse(text).body:
            target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
            if isinstance(target, ast.Name) and target.id == "__all__" and isinstance(node.value, (ast.List, ast.Tuple)):
                names |= {e.value for e in node.value.elts}
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                for a in node.names:
                    src[a.asname or a.name] = node.module
    names = names or set(src)
    return {n: src.get(n) for n in names if not n.startswith("_")}


def main(wheel: str) -> None:
    zf = zipfile.ZipFile(wheel)
    files = set(zf.namelist())
    modules, keywords = {}, {}
    for sub in SUBMODULES:
        base = f"cucim/skimage/{sub}/"
        texts = [zf.read(base + f).decode() for f in ("__init__.py", "__init__.pyi") if base + f in files]
        exports = _exports(texts)
        modules[sub] = sorted(exports)
        for name, mod in exports.items():
            path = base + (mod or "").replace(".", "/") + ".py"
            if mod is None or path not in files:
                continue
            for d in ast.parse(zf.read(path).decode()).body:
                if isinstance(d, ast.FunctionDef) and d.name == name and d.args.kwarg is None:
                    keywords[f"cucim.skimage.{sub}.{name}"] = sorted(a.arg for a in d.args.args + d.args.kwonlyargs)
    version = Path(wheel).name.split("-")[1]
    out = Path(__file__).resolve().parent / "data" / "cucim_api.json"
    out.write_text(json.dumps({"cucim_version": version, "modules": modules, "keywords": keywords},
                              indent=0, sort_keys=True) + "\n")
    print(f"{out}: cuCIM {version}, {sum(map(len, modules.values()))} functions, {len(keywords)} signatures")


if __name__ == "__main__":
    main(sys.argv[1])
