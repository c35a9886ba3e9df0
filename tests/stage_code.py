"""What code and params each pipeline stage really uses, read statically from the source.

Starting at the stage's CLI command, follow every name a function refers to into the function,
class or constant it resolves to, across the churnlens modules (module-level and function-local
imports alike). The modules reached are the stage's code; the ``params.<section>.<key>`` chains
read in the functions reached are its params. The dvc.yaml contract test compares both with the
stage's declared deps and params, so a code or params change always reruns the stages it affects.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = "churnlens"
PARAMS_NAMES = {"params", "loaded_params"}  # how the code names a whole Params object


@dataclass
class _Module:
    name: str
    path: Path
    tree: ast.Module
    definitions: dict[str, ast.AST] = field(default_factory=dict)
    bindings: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # name -> (module, attribute)


def _import_bindings(nodes: list[ast.stmt] | list[ast.AST]) -> dict[str, tuple[str, str | None]]:
    bindings: dict[str, tuple[str, str | None]] = {}
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == PACKAGE:
            for alias in node.names:
                target = f"{node.module}.{alias.name}"
                # `from churnlens import features` binds a module; `from churnlens.x import f` a name.
                bindings[alias.asname or alias.name] = (target, None) if node.module == PACKAGE else (node.module,
                                                                                                     alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    bindings[alias.asname or alias.name] = (alias.name, None)
    return bindings


def load_package(src: Path) -> dict[str, _Module]:
    modules = {}
    for path in sorted((src / PACKAGE).rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        module = _Module(name, path, tree, bindings=_import_bindings(tree.body))
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                module.definitions[node.name] = node
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    if isinstance(target, ast.Name):
                        module.definitions[target.id] = node
        modules[name] = module
    return modules


@dataclass
class StageUse:
    modules: set[str]
    params: set[tuple[str, str | None]]  # (section, key or None for the whole section)


def _attribute_chain(node: ast.Attribute) -> list[str]:
    chain = []
    current: ast.AST = node
    while isinstance(current, ast.Attribute):
        chain.append(current.attr)
        current = current.value
    if isinstance(current, ast.Name):
        chain.append(current.id)
    return list(reversed(chain))


def stage_use(modules: dict[str, _Module], entry: tuple[str, str], sections: dict[str, dict]) -> StageUse:
    """Modules and params reached from ``entry`` = (module, function)."""
    seen: set[tuple[str, str]] = set()
    reached_modules: set[str] = set()
    used_params: set[tuple[str, str | None]] = set()
    queue = [entry]
    while queue:
        module_name, name = queue.pop()
        if (module_name, name) in seen or module_name not in modules:
            continue
        seen.add((module_name, name))
        module = modules[module_name]
        reached_modules.add(module_name)
        node = module.definitions.get(name)
        if node is None:
            if name in module.bindings:  # a name re-exported by import
                target_module, attribute = module.bindings[name]
                queue.append((target_module, attribute or ""))
            continue
        local = {**module.bindings, **_import_bindings(list(ast.walk(node)))}
        # Only whole chains count: `params.train.seed` reads train.seed, not all of train.
        inner = {id(child.value) for child in ast.walk(node) if isinstance(child, ast.Attribute)}
        for child in ast.walk(node):
            if id(child) in inner:
                continue
            if isinstance(child, ast.Name):
                if child.id in local:
                    target_module, attribute = local[child.id]
                    queue.append((target_module, attribute or ""))
                elif child.id in module.definitions:
                    queue.append((module_name, child.id))
            elif isinstance(child, ast.Attribute):
                chain = _attribute_chain(child)
                if len(chain) >= 2 and chain[0] in local and local[chain[0]][1] is None:
                    queue.append((local[chain[0]][0], chain[1]))  # module.function
                if len(chain) >= 2 and chain[0] in PARAMS_NAMES and chain[1] in sections:
                    key = chain[2] if len(chain) >= 3 and chain[2] in sections[chain[1]] else None
                    used_params.add((chain[1], key))
    return StageUse(reached_modules, used_params)


def module_path(modules: dict[str, _Module], name: str, root: Path) -> str:
    return modules[name].path.relative_to(root).as_posix()
