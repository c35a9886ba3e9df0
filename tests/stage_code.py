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
            if isinstance(node, ast.ClassDef):
                # Methods are reached one by one (see stage_use): an engine class holds the
                # features' operations and the scoring's, and a stage runs only some of them.
                for member in node.body:
                    if isinstance(member, ast.FunctionDef | ast.AsyncFunctionDef):
                        module.definitions[f"{node.name}.{member.name}"] = member
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    if isinstance(target, ast.Name):
                        module.definitions[target.id] = node
        modules[name] = module
    for module in modules.values():  # `from churnlens.engines import timegrid` binds a module too
        for bound, (target, attribute) in list(module.bindings.items()):
            if attribute is not None and f"{target}.{attribute}" in modules:
                module.bindings[bound] = (f"{target}.{attribute}", None)
    return modules


def _derived_reads(modules: dict[str, _Module]) -> dict[str, set[str]]:
    """Per property or method of the config classes, the fields it reads (``self.<field>``):
    ``params.features.label_end`` reads ``lead_days`` and ``horizon_days``."""
    config = modules.get(f"{PACKAGE}.config")
    reads: dict[str, set[str]] = {}
    for name, node in (config.definitions.items() if config else ()):
        if "." in name:
            reads.setdefault(name.split(".")[1], set()).update(
                child.attr for child in ast.walk(node)
                if isinstance(child, ast.Attribute) and isinstance(child.value, ast.Name) and child.value.id == "self")
    changed = True
    while changed:  # a method reading another (self.label_end) reads what that one reads
        changed = False
        for fields_read in reads.values():
            extra = set().union(*(reads.get(f, set()) for f in fields_read)) - fields_read
            if extra:
                fields_read |= extra
                changed = True
    return reads


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
    derived = _derived_reads(modules)
    seen: set[tuple[str, str]] = set()
    reached_modules: set[str] = set()
    used_params: set[tuple[str, str | None]] = set()
    queue = [entry]
    reached_classes: set[tuple[str, str]] = set()
    used_attributes: set[str] = set()

    def reach_methods(classes: set[tuple[str, str]], attributes: set[str]) -> None:
        # A method runs when a reached class's method name is used anywhere reached (the type
        # of ``engine`` in ``engine.score(...)`` is not known statically); construction and
        # ``with`` run the dunder methods.
        for module_name, class_name in classes:
            for attribute in attributes | {"__init__", "__post_init__", "__enter__", "__exit__"}:
                if f"{class_name}.{attribute}" in modules[module_name].definitions:
                    queue.append((module_name, f"{class_name}.{attribute}"))

    while queue:
        module_name, name = queue.pop()
        if (module_name, name) in seen or module_name not in modules:
            continue
        seen.add((module_name, name))
        module = modules[module_name]
        reached_modules.add(module_name)
        node = module.definitions.get(name)
        if isinstance(node, ast.ClassDef):
            reached_classes.add((module_name, name))
            reach_methods({(module_name, name)}, used_attributes)
            node = ast.ClassDef(name=node.name, bases=node.bases, keywords=node.keywords, decorator_list=[],
                                body=[m for m in node.body if not isinstance(m, ast.FunctionDef | ast.AsyncFunctionDef)]
                                or [ast.Pass()], type_params=[])
        elif "." in name:
            name = name.split(".")[0]  # the method's names resolve in its module
        if node is None:
            if name in module.bindings:  # a name re-exported by import
                target_module, attribute = module.bindings[name]
                queue.append((target_module, attribute or ""))
            continue
        local = {**module.bindings, **_import_bindings(list(ast.walk(node)))}
        # Only whole chains count: `params.train.seed` reads train.seed, not all of train.
        inner = {id(child.value) for child in ast.walk(node) if isinstance(child, ast.Attribute)}
        attributes = {child.attr for child in ast.walk(node) if isinstance(child, ast.Attribute)
                      and _attribute_chain(child)[:1] not in ([n] for n in PARAMS_NAMES)} - used_attributes
        used_attributes |= attributes
        reach_methods(reached_classes, attributes)
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
                    section = sections[chain[1]]
                    if len(chain) >= 3 and chain[2] not in section and derived.get(chain[2], set()) & set(section):
                        used_params |= {(chain[1], key) for key in derived[chain[2]] if key in section}
                        continue
                    key = chain[2] if len(chain) >= 3 and chain[2] in section else None
                    used_params.add((chain[1], key))
    return StageUse(reached_modules, used_params)


def module_path(modules: dict[str, _Module], name: str, root: Path) -> str:
    return modules[name].path.relative_to(root).as_posix()
