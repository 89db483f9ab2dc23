"""Importing uniseg changes nothing in torch, mmengine, mmcv, mmdet or mmseg, except by registering into
OpenMMLab registries (the extension point configs select from); and uniseg's modules import each other
without cycles.

A fresh interpreter first lists the modules of those packages that ``import uniseg`` loads. A second one
imports exactly those, records their state, imports ``uniseg`` (and ``uniseg.models``, ``uniseg.engine``,
``uniseg.datasets``), and reports every difference:

* module globals, compared by identity (added, removed or rebound names);
* class attributes of the classes those modules define (``vars(cls)``, by identity), which is where a
  monkey-patched method would show;
* the contents of registries: new names are allowed in mmseg's and mmdet's registries (and in mmengine's
  ``STRATEGIES``, which has no mmseg child); a replaced or removed entry, or a new name in any other root
  registry, is a change;
* mmengine's checkpoint schemes (``CheckpointLoader._schemes``) and manager instances (``_instance_dict``);
* process switches in torch: flushing of subnormal floats, default dtype, threads, grad mode,
  deterministic algorithms, matmul precision, cuDNN and TF32 flags.

The same file runs as the probe script (``python tests/test_import_side_effects.py``), so the check and
the tests that prove it catches a patch use one implementation.
"""
from __future__ import annotations

import ast
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Tuple

import pytest

REPO = Path(__file__).resolve().parents[1]
WATCHED = ("torch", "mmengine", "mmcv", "mmdet", "mmseg")
UNISEG_IMPORTS = ("uniseg", "uniseg.models", "uniseg.engine", "uniseg.datasets")
#: Registries (scope, name) that may gain new names: OpenMMLab's way for a package to plug in.
REGISTRATION_SCOPES = ("mmseg", "mmdet")
ROOT_REGISTRIES_WITHOUT_MMSEG_CHILD = {("mmengine", "strategy")}
#: Class-level tables mutated in place, whose contents (not just identity) are compared.
MUTABLE_CLASS_TABLES = ("_schemes", "_instance_dict")
#: Caches the interpreter itself writes into module and class dicts.
INTERPRETER_CACHES = ("__warningregistry__", "__slotnames__")


# --------------------------------------------------------------------------- probe (runs in a fresh interpreter)
def _is_watched(name: str) -> bool:
    return name.split(".", 1)[0] in WATCHED


def _torch_switches() -> Dict[str, Any]:
    import torch

    return {
        "flush_denormal": bool((torch.tensor(1e-40, dtype=torch.float32) * 1.0).item() == 0.0),
        "default_dtype": str(torch.get_default_dtype()),
        "num_threads": torch.get_num_threads(),
        "grad_enabled": torch.is_grad_enabled(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "anomaly_detection": torch.is_anomaly_enabled(),
        "cudnn.enabled": torch.backends.cudnn.enabled,
        "cudnn.benchmark": torch.backends.cudnn.benchmark,
        "cudnn.deterministic": torch.backends.cudnn.deterministic,
        "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
        "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
    }


def _snapshot(modules: Iterable[str]) -> Dict[Tuple[str, str, str], Any]:
    """``(kind, module, name) -> object`` for everything compared; objects are kept, so ids stay valid."""
    from mmengine.registry import Registry

    state: Dict[Tuple[str, str, str], Any] = {}
    registries: Dict[int, Registry] = {}
    for modname in modules:
        module = sys.modules.get(modname)
        if module is None:
            continue
        for key, value in list(vars(module).items()):
            if key in INTERPRETER_CACHES:
                continue
            state[("global", modname, key)] = value
            if isinstance(value, Registry):
                registries[id(value)] = value
            if isinstance(value, type) and value.__module__ == modname:
                for attr, attr_value in list(vars(value).items()):
                    if attr in INTERPRETER_CACHES:
                        continue
                    state[("class", modname, f"{key}.{attr}")] = attr_value
                    if attr in MUTABLE_CLASS_TABLES and isinstance(attr_value, dict):
                        for entry, obj in list(attr_value.items()):
                            state[("table", modname, f"{key}.{attr}[{entry!r}]")] = obj
    for registry in registries.values():  # reported under their scope, wherever they are imported
        where = f"{registry.scope}.{registry.name}"
        for entry, obj in list(registry._module_dict.items()):
            state[("registry", registry.scope, f"{where}[{entry!r}]")] = obj
        for child, obj in list(registry._children.items()):
            state[("registry-child", registry.scope, f"{where}<{child}>")] = obj
    for switch, value in _torch_switches().items():
        state[("switch", "torch", switch)] = value
    return state


def _allowed(kind: str, modname: str, what: str, added: bool) -> bool:
    if kind != "registry" or not added:
        return False
    scope, name = what.split("[", 1)[0].split(".", 1)
    return scope in REGISTRATION_SCOPES or (scope, name) in ROOT_REGISTRIES_WITHOUT_MMSEG_CHILD


def _diff(before: Dict, after: Dict) -> List[Dict[str, str]]:
    changes = []
    for key in sorted(before.keys() | after.keys()):
        kind, modname, what = key
        if key not in after:
            change = "removed"
        elif key not in before:
            change = "added"
        elif kind == "switch":
            change = "changed" if before[key] != after[key] else ""
        else:
            change = "replaced" if before[key] is not after[key] else ""
        if change and not _allowed(kind, modname, what, change == "added"):
            changes.append(dict(kind=kind, module=modname, what=what, change=change))
    return changes


def _probe(preimport: List[str], payload: str) -> Dict[str, Any]:
    """Import ``preimport``, snapshot, run ``payload``, snapshot; return the changes."""
    failed = []
    for name in preimport:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001  (reported: a module we could not watch)
            failed.append(f"{name}: {type(exc).__name__}: {exc}")
    watched = [name for name in sys.modules if _is_watched(name)]
    before = _snapshot(watched)
    exec(compile(payload, "<payload>", "exec"), {})
    after = _snapshot(watched)
    unwatched = sorted(name for name in sys.modules if _is_watched(name) and name not in set(watched))
    return dict(changes=_diff(before, after), watched=len(watched), not_preimported=unwatched,
                preimport_failed=failed)


def _main(argv: List[str]) -> None:
    sys.path.insert(0, str(REPO))  # this worktree's uniseg, not an installed one
    mode, arg = argv[0], json.loads(argv[1])
    if mode == "discover":
        for name in arg:
            importlib.import_module(name)
        result: Any = [name for name in sys.modules if _is_watched(name)]
    else:
        result = _probe(arg["preimport"], arg["payload"])
    print("\n" + json.dumps(result))


# --------------------------------------------------------------------------- tests
def _run(mode: str, arg: Any) -> Any:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, __file__, mode, json.dumps(arg)], cwd=str(REPO), env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _describe(changes: List[Dict[str, str]]) -> str:
    return "\n".join(f"{c['change']}: {c['kind']} {c['module']}: {c['what']}" for c in changes)


@pytest.fixture(scope="module")
def import_report() -> Dict[str, Any]:
    preimport = _run("discover", list(UNISEG_IMPORTS))
    assert "mmcv.ops.multi_scale_deform_attn" in preimport and "mmseg.models" in preimport
    payload = "".join(f"import {name}\n" for name in UNISEG_IMPORTS)
    report = _run("probe", dict(preimport=preimport, payload=payload))
    assert report["preimport_failed"] == [], report["preimport_failed"]
    assert report["not_preimported"] == []  # every module uniseg loads was watched
    assert report["watched"] > 1000
    return report


def test_importing_uniseg_changes_nothing_but_registries(import_report):
    changes = import_report["changes"]
    assert changes == [], f"importing uniseg changed:\n{_describe(changes)}"


# The check itself: every kind of patch it claims to see is reported, and registration is not.
_PATCHES = """
import torch
import mmcv.ops.multi_scale_deform_attn as msda
from mmengine.registry import MODELS as ROOT_MODELS
from mmengine.runner.checkpoint import CheckpointLoader
from mmseg.registry import METRICS, MODELS

msda.IS_CUDA_AVAILABLE = not msda.IS_CUDA_AVAILABLE                      # a module global
msda.MultiScaleDeformableAttention.forward = lambda self, *a, **k: None  # a method
CheckpointLoader.register_scheme(prefixes='', force=True)(lambda filename, map_location=None: None)
torch.set_flush_denormal(True)                                           # a process switch
METRICS.register_module(name='IoUMetric', force=True, module=type('Replacement', (), {}))  # overwrite
ROOT_MODELS.register_module(name='ProbeInRoot', module=type('Root', (), {}))
MODELS.register_module(name='ProbeAddition', module=type('Addition', (), {}))  # registration: allowed
"""


def test_the_check_reports_patches_and_allows_registration():
    report = _run("probe", dict(preimport=["torch", "mmcv.ops", "mmengine.runner", "mmseg.evaluation"],
                                payload=_PATCHES))
    found = {(c["change"], c["module"], c["what"]) for c in report["changes"]}
    assert found == {
        ("replaced", "mmcv.ops.multi_scale_deform_attn", "IS_CUDA_AVAILABLE"),
        ("replaced", "mmcv.ops.multi_scale_deform_attn", "MultiScaleDeformableAttention.forward"),
        ("replaced", "mmengine.runner.checkpoint", "CheckpointLoader._schemes['']"),
        ("replaced", "mmengine.runner.checkpoint", "CheckpointLoader._schemes"),  # register_scheme re-sorts it
        ("changed", "torch", "flush_denormal"),
        ("replaced", "mmseg", "mmseg.metric['IoUMetric']"),
        ("added", "mmengine", "mmengine.model['ProbeInRoot']"),
    }, _describe(report["changes"])



# --------------------------------------------------------------------------- uniseg's own import graph
def _module_graph(package_root: Path) -> Dict[str, set]:
    """``module -> uniseg modules it imports`` for every non-package module.

    ``__init__`` files only re-export, so imports of a package are not followed into it.
    """
    files = {".".join(p.with_suffix("").relative_to(package_root.parent).parts): p
             for p in package_root.rglob("*.py")}
    modules = {name.removesuffix(".__init__") for name in files}
    graph = {}
    for name, path in files.items():
        if name.endswith(".__init__"):
            continue
        package = name.rsplit(".", 1)[0].split(".")
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = ".".join(package[:len(package) - node.level + 1] + [node.module or ""]).strip(".") \
                    if node.level else node.module or ""
                deps.update(c for c in [base, *(f"{base}.{a.name}" for a in node.names)]
                            if c in modules and f"{c}.__init__" not in files)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in modules)
        graph[name] = deps - {name}
    return graph


def _cycle(graph: Dict[str, set]):
    """One import cycle as ``[a, b, ..., a]``, or None."""
    done: set = set()

    def visit(node, path):
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        for dep in sorted(graph.get(node, ())):
            found = visit(dep, path + [node])
            if found:
                return found
        done.add(node)
        return None

    return next((found for found in (visit(n, []) for n in sorted(graph)) if found), None)


def test_uniseg_modules_import_each_other_without_cycles():
    graph = _module_graph(REPO / "uniseg")
    assert graph["uniseg.models.backbones.spec"] == set()
    assert graph["uniseg.io.slide"] <= {"uniseg.utils.imageio", "uniseg.utils.typing_utils"}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]  # the check can fail


if __name__ == "__main__":
    _main(sys.argv[1:])
