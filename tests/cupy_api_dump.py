"""Write tests/data/cupy_api.json: the public names of CuPy, cupyx, cupyx.scipy.ndimage and
cupy.ndarray, and the keyword parameters of CuPy's Python-defined functions, for the fake CuPy
(tests/fake_cupy.py) to refuse what the real one lacks.

Run where CuPy is installed (no GPU needed: CuPy imports without one), with the CuPy version of
the GPU machines (14.2.0 now):

    pip download cupy-cuda13x==14.2.0 --no-deps -d /tmp/w && python -m venv /tmp/c \\
        && /tmp/c/bin/pip install /tmp/w/*.whl && /tmp/c/bin/python tests/cupy_api_dump.py
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path


def _params(fn):
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None  # compiled (ufuncs, Cython): not checked
    if any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
        return None
    return sorted(p.name for p in sig.parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def main() -> None:
    import cupy
    import cupyx
    import cupyx.scipy.ndimage as ndi

    def names(mod):
        return sorted(n for n in dir(mod) if not n.startswith("_"))

    api = {"cupy_version": cupy.__version__, "cupy": names(cupy), "cupyx": names(cupyx),
           "cupyx.scipy.ndimage": names(ndi),
           "ndarray": sorted(n for n in dir(cupy.ndarray) if not n.startswith("_")),
           "keywords": {}}
    for prefix, mod in (("cupy", cupy), ("cupyx.scipy.ndimage", ndi)):
        for n in names(mod):
            obj = getattr(mod, n)
            if callable(obj) and not isinstance(obj, type):
                params = _params(obj)
                if params is not None:
                    api["keywords"][f"{prefix}.{n}"] = params
    out = Path(__file__).resolve().parent / "data" / "cupy_api.json"
    out.write_text(json.dumps(api, indent=0, sort_keys=True) + "\n")
    print(f"{out}: CuPy {cupy.__version__}, {len(api['cupy'])} names, {len(api['keywords'])} signatures")


if __name__ == "__main__":
    main()
