"""The package's shape: data flows one way, platform.yaml -> spec -> contract -> target -> checks.

Walks every ``import`` of every module (also the ones inside functions: a lazy import is still a
dependency; not the ``if TYPE_CHECKING:`` ones, which are annotations) and holds the layering of
docs/architecture.md.
"""

from __future__ import annotations

import ast
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


def _unit(module: str) -> str:
    """airflow_gitops.local.platform -> local; airflow_gitops.spec -> spec."""
    return module.split(".")[1] if module.count(".") >= 1 else module


def _imports(path: Path) -> set[str]:
    module = "airflow_gitops." + ".".join(path.relative_to(PKG).with_suffix("").parts).removesuffix(".__init__")
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    tree = ast.parse(path.read_text())
    typing_only = {
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and ast.unparse(block.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
        for n in ast.walk(block)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:  # annotations only: not a run-time dependency
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("airflow_gitops")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                names = [target] if node.module else [f"{target}.{a.name}" for a in node.names]
                found |= set(names)
            elif node.module and node.module.startswith("airflow_gitops"):
                found.add(node.module)
    return {m for m in found if m != "airflow_gitops"}


def _edges() -> dict[tuple[str, str], list[str]]:
    edges: dict[tuple[str, str], list[str]] = {}
    for path in PKG.rglob("*.py"):
        if "template" in path.parts:
            continue
        rel = str(path.relative_to(PKG))
        src = rel.split("/")[0].removesuffix(".py")
        for mod in _imports(path):
            dst = _unit(mod)
            if dst != src:
                edges.setdefault((src, dst), []).append(rel)
    return edges


def test_every_unit_has_a_layer():
    units = {p.name.removesuffix(".py") for p in PKG.iterdir() if not p.name.startswith(("_", "."))}
    assert units - {"py.typed"} <= set(LAYER), f"add these to LAYERS: {units - set(LAYER)}"


def test_imports_go_down_the_layers_only():
    upward = [
        f"{src} -> {dst} (in {', '.join(sorted(set(files)))})"
        for (src, dst), files in sorted(_edges().items())
        if LAYER[dst] >= LAYER[src]
    ]
    assert upward == [], "imports against the flow:\n" + "\n".join(upward)


def test_no_import_cycle_between_units():
    graph: dict[str, set[str]] = {}
    for src, dst in _edges():
        graph.setdefault(src, set()).add(dst)

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    cycles = sorted(u for u in graph if u in reach(u))
    assert cycles == [], f"units on an import cycle: {cycles}"


def test_the_walker_sees_lazy_imports(tmp_path):
    """The check would be blind without this: imports inside functions count."""
    found = _imports(PKG / "cli.py")
    assert "airflow_gitops.local.platform" in found and "airflow_gitops.kubernetes.render" in found


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


def test_kubernetes_secrets_hold_exactly_the_keys_the_contract_names(tmp_path):
    from k8s_specs import spec_in

    from airflow_gitops.kubernetes.manifests import build_secrets

    for delivery in ("git-sync", "bundle"):
        (tmp_path / delivery).mkdir()
        spec = spec_in(tmp_path / delivery, delivery=delivery)
        rendered = {s["metadata"]["name"]: sorted(s["stringData"]) for s in build_secrets(spec).secrets}
        assert rendered == {name: sorted(keys) for name, keys in contract.secret_keys(spec).items()}
