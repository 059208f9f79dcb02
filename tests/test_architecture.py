"""The package's shape: data flows one way, platform.yaml -> spec -> contract -> target -> checks.

Walks every ``import`` of every module - at module level, inside functions (a lazy import is still a
dependency) and under ``if TYPE_CHECKING:`` (an annotation is one too: the two modules cannot be
understood apart) - and holds the layering of docs/architecture.md: no unit imports a unit of its own
layer or above (a back-arrow), and no module is on an import cycle, also inside a subpackage.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import pytest

from airflow_gitops import contract, names
from airflow_gitops.spec import parse_spec

PKG = Path(__file__).resolve().parents[1] / "src" / "airflow_gitops"

# Each unit may import only units of a LOWER layer (or itself). Top-level modules are units of their own.
LAYERS = [
    {"errors", "names", "binaries", "dburl", "providers"},
    {"spec"},
    {"contract", "keystore", "gitremote", "target"},
    {"fernetkeys", "dag_repo", "managed", "serving"},
    {"local", "kubernetes"},
    {"checks", "init"},
    {"cli"},
]
LAYER = {unit: i for i, units in enumerate(LAYERS) for unit in units}


@dataclass(frozen=True)
class Import:
    src: str  # importing module, e.g. airflow_gitops.local.platform
    dst: str  # imported module (a submodule when one is named, else the package)
    file: str  # path relative to the package's parent
    line: int
    kind: str  # "module-level", "lazy" (inside a function) or "type-only" (under if TYPE_CHECKING)

    def __str__(self) -> str:
        return f"{self.file}:{self.line} ({self.kind})"


def _modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package at ``root`` (not the DAG template)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        if "template" in path.relative_to(root).parts:
            continue
        parts = (root.name, *path.relative_to(root).with_suffix("").parts)
        out[".".join(parts).removesuffix(".__init__")] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return ast.unparse(test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")


def _imports(root: Path, module: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """Every import of the package's own modules in one file, each with its line and kind."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    rel = str(path.relative_to(root.parent))
    found: list[Import] = []

    def target(name: str) -> str:
        while name not in modules and "." in name:  # `import pkg.mod.attr` style: the module part
            name = name.rsplit(".", 1)[0]
        return name

    def add(node: ast.AST, kind: str) -> None:
        dsts: list[str] = []
        if isinstance(node, ast.Import):
            dsts = [a.name for a in node.names if a.name.split(".")[0] == root.name]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                base_name = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == root.name:
                base_name = node.module
            else:
                return
            # `from pkg import sub` names the submodule when there is one, else an attribute of pkg
            dsts = [f"{base_name}.{a.name}" if f"{base_name}.{a.name}" in modules else base_name for a in node.names]
        for dst in dict.fromkeys(target(d) for d in dsts):
            if dst != module and dst in modules and dst != root.name:
                found.append(Import(module, dst, rel, node.lineno, kind))

    def visit(node: ast.AST, kind: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                add(child, kind)
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, "type-only" if kind == "type-only" else "lazy")
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    visit(ast.Module(body=[stmt], type_ignores=[]), "type-only")
                for stmt in child.orelse:
                    visit(ast.Module(body=[stmt], type_ignores=[]), kind)
            else:
                visit(child, kind)

    visit(ast.parse(path.read_text()), "module-level")
    return found


def _graph(root: Path) -> list[Import]:
    modules = _modules(root)
    return [imp for module, path in modules.items() for imp in _imports(root, module, path, modules)]


def _short(module: str) -> str:
    return module.split(".", 1)[1] if "." in module else module


def _cycles(imports: list[Import]) -> list[str]:
    """One shortest cycle per strongly connected group of modules, e.g.
    ``a -> b -> a: pkg/a.py:3 (module-level) imports b; pkg/b.py:7 (lazy) imports a``."""
    edges: dict[str, dict[str, list[Import]]] = {}
    for imp in imports:
        edges.setdefault(imp.src, {}).setdefault(imp.dst, []).append(imp)
    nodes = sorted(set(edges) | {d for ds in edges.values() for d in ds})
    # Tarjan's strongly connected components (iterative: no recursion limit on a deep package)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for start in nodes:
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, {}))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, {})))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    out = []
    for group in groups:
        first, members = group[0], set(group)
        # breadth-first from the group's first module back to itself, inside the group
        paths = {first: [first]}
        todo = [first]
        cycle = None
        while todo and cycle is None:
            nxt = []
            for node in todo:
                for dst in sorted(edges.get(node, {})):
                    if dst == first:
                        cycle = [*paths[node], first]
                        break
                    if dst in members and dst not in paths:
                        paths[dst] = [*paths[node], dst]
                        nxt.append(dst)
                if cycle:
                    break
            todo = nxt
        assert cycle is not None
        hops = [f"{'; '.join(str(i) for i in edges[a][b])} imports {_short(b)}" for a, b in pairwise(cycle)]
        others = sorted(set(group) - set(cycle))
        also = f" (and on a cycle with them: {', '.join(_short(m) for m in others)})" if others else ""
        out.append(" -> ".join(_short(m) for m in cycle) + ": " + "; ".join(hops) + also)
    return out


def _unit(module: str) -> str:
    """airflow_gitops.local.platform -> local; airflow_gitops.spec -> spec."""
    return module.split(".")[1]


def test_every_unit_has_a_layer():
    units = {p.name.removesuffix(".py") for p in PKG.iterdir() if not p.name.startswith(("_", "."))}
    assert units - {"py.typed"} <= set(LAYER), f"add these to LAYERS: {units - set(LAYER)}"


def test_imports_go_down_the_layers_only():
    upward = [
        f"{_unit(i.src)} -> {_unit(i.dst)}: {i} imports {_short(i.dst)}"
        for i in _graph(PKG)
        if _unit(i.src) != _unit(i.dst) and LAYER[_unit(i.dst)] >= LAYER[_unit(i.src)]
    ]
    assert upward == [], "imports against the flow (back-arrows):\n" + "\n".join(sorted(upward))


def test_no_import_cycle_between_units():
    between = [Import(_unit(i.src), _unit(i.dst), i.file, i.line, i.kind) for i in _graph(PKG)]
    cycles = _cycles([i for i in between if i.src != i.dst])
    assert cycles == [], "units on an import cycle:\n" + "\n".join(cycles)


def test_no_import_cycle_between_modules():
    """Module granularity, inside a unit too (local/, checks/, a subpackage's __init__ and its modules)."""
    cycles = _cycles(_graph(PKG))
    assert cycles == [], "import cycles:\n" + "\n".join(cycles)


def test_the_walker_sees_lazy_imports():
    """The check would be blind without this: imports inside functions count."""
    found = {(i.dst, i.kind) for i in _graph(PKG) if i.src == "airflow_gitops.cli"}
    assert ("airflow_gitops.checks.doctor", "lazy") in found
    assert ("airflow_gitops.kubernetes.image_build", "lazy") in found


def test_the_walker_finds_every_kind_of_cycle(tmp_path):
    """On a package written here: a type-only and a lazy import that close a cycle, and a subpackage
    whose __init__ imports a module that imports the __init__ back, are each reported with file:line."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from .b import B\n\nA = 1\n")
    (pkg / "b.py").write_text("B = 1\n\n\ndef f():\n    from pkg import a\n")
    (pkg / "sub" / "__init__.py").write_text("X = 1\n\n\ndef g():\n    from . import leaf\n")
    (pkg / "sub" / "leaf.py").write_text("from . import X\n")
    (pkg / "sub" / "fine.py").write_text("from .leaf import X\nfrom ..a import A\n")

    assert _cycles(_graph(pkg)) == [
        "a -> b -> a: pkg/a.py:4 (type-only) imports b; pkg/b.py:5 (lazy) imports a",
        "sub -> sub.leaf -> sub: pkg/sub/__init__.py:5 (lazy) imports sub.leaf; "
        "pkg/sub/leaf.py:1 (module-level) imports sub",
    ]


@pytest.mark.parametrize(
    ("section", "key", "owner"),
    [
        ("api", "port", "local.ports.api"),
        ("core", "executor", "airflow.executor"),
        ("database", "sql_alchemy_conn", "database.url"),
    ],
)
def test_a_managed_airflow_key_in_airflow_config_names_the_platform_key(section, key, owner, tmp_path):
    from airflow_gitops.spec import SpecError

    with pytest.raises(SpecError) as err:
        parse_spec({"airflow": {"config": {section: {key: "1"}}}}, base_dir=tmp_path)
    assert f"{section}.{key}" in str(err.value) and owner in str(err.value)


def test_tuned_defaults_may_be_overridden_and_win(tmp_path):
    from airflow_gitops.local.airflow_env import airflow_env
    from airflow_gitops.local.layout import Layout

    spec = parse_spec(
        {"airflow": {"config": {"api": {"workers": 3}, "core": {"default_task_retries": 2}}}}, base_dir=tmp_path
    )
    env = airflow_env(Layout(spec), "postgresql://u:p@127.0.0.1/db")
    assert env["AIRFLOW__API__WORKERS"] == "3" and env["AIRFLOW__CORE__DEFAULT_TASK_RETRIES"] == "2"


def test_every_key_the_local_target_sets_is_declared_in_the_contract(tmp_path):
    """So the collision check (derived from names.SETTINGS) covers everything the platform sets."""
    from airflow_gitops.local.airflow_env import airflow_config
    from airflow_gitops.local.layout import Layout

    spec = parse_spec({}, base_dir=tmp_path)
    undeclared = set(airflow_config(Layout(spec), "postgresql://u:p@127.0.0.1/db")) - set(names.SETTINGS)
    assert undeclared == set()


# Specs that change which Secrets exist and what they hold: delivery, SSH or HTTPS repository, AWS files
# or none, serving on or off, declared Connections/Variables, a secret-looking airflow.config key.
SECRET_CASES = {
    "git-sync ssh": {},
    "bundle ssh": {"delivery": "bundle"},
    "git-sync https": {"dags": {"repo": "https://github.com/org/airflow-dags.git"}},
    "bundle https": {"delivery": "bundle", "dags": {"repo": "https://github.com/org/airflow-dags.git"}},
    "aws files": {"aws": {"credentials_file": "aws-credentials", "config_file": "aws-config"}},
    "serving off": {"serving": {"enabled": False}},
    "bundle, declared, config secret, serving off": {
        "delivery": "bundle",
        "serving": {"enabled": False},
        "connections": {"s3_data": {"conn_type": "aws", "extra": {"region_name": "us-east-1"}}},
        "variables": {"model_threshold": "0.9"},
        "airflow": {"config": {"smtp": {"smtp_password": "inline-for-the-test"}}},
    },
}


@pytest.mark.parametrize("case", list(SECRET_CASES))
def test_kubernetes_secrets_hold_exactly_the_keys_the_contract_names(case, tmp_path):
    """contract.secret_keys is the one map of Secret -> keys (checks/kube.py checks a cluster against it);
    kubernetes/manifests.build_secrets must make exactly those Secrets with exactly those keys."""
    from k8s_specs import spec_in

    from airflow_gitops.kubernetes.manifests import build_secrets

    over = dict(SECRET_CASES[case])
    delivery = over.pop("delivery", "git-sync")
    (tmp_path / "aws-credentials").write_text("[default]\naws_access_key_id = x\naws_secret_access_key = y\n")
    (tmp_path / "aws-config").write_text("[default]\nregion = ap-northeast-2\n")
    spec = spec_in(tmp_path, delivery=delivery, **over)
    rendered = {s["metadata"]["name"]: sorted(s["stringData"]) for s in build_secrets(spec).secrets}
    assert rendered == {name: sorted(keys) for name, keys in contract.secret_keys(spec).items()}
    # And what docs/kubernetes.md says the git Secret holds (independent of both).
    git = rendered.get(spec.secrets.git_ssh_secret)
    ssh, bundle = spec.dags.is_ssh, delivery == "bundle"
    want_git = sorted([*(["gitSshKey", "known_hosts"] if ssh else []), *(["connection"] if bundle else [])]) or None
    assert git == want_git
    assert (spec.secrets.connections_secret in rendered) == bool(over.get("connections"))
    assert (spec.secrets.config_secret in rendered) == ("airflow" in over)
    # The keys the official chart reads (its values name them: docs/kubernetes.md), whatever the spec.
    n = spec.secrets
    assert {name: rendered[name] for name in (n.fernet_key_secret, n.api_secret_key_secret, n.jwt_secret_secret)} == {
        n.fernet_key_secret: ["fernet-key"],
        n.api_secret_key_secret: ["api-secret-key"],
        n.jwt_secret_secret: ["jwt-secret"],
    }
    assert rendered[n.metadata_secret] == ["connection"] and rendered[n.admin_password_secret] == ["password"]
    assert rendered[n.aws_secret] == ["config", "credentials"]
