"""The package's layer order (docs/DESIGN.md): a module imports only from its own layer or below, and no two
modules import each other through any chain. Read from the source with `ast` (nothing is imported), so a new
upward import fails here before it turns into an import cycle at run time."""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "macosnet_jax"

# Bottom to top, as docs/DESIGN.md lists them. A module's layer is that of its longest matching prefix.
LAYERS = [
    # Leaves that import nothing else of the package but each other: the user-error type any layer may raise, where the
    # config files are (the flag parser of `errors` names the installed configs), the process's malloc setting and
    # the XLA CPU flags set before the backend starts.
    ("leaves", ["errors", "config_files", "host_memory", "xla_cpu_flags"]),
    ("ops", ["geometry", "correlation"]),
    ("models", ["models", "weights"]),
    ("losses", ["losses"]),
    ("stages", ["data", "experiment_config", "stage_api", "stages"]),
    ("training", ["training", "train", "checkpoint", "preemption"]),
    ("evaluation", ["evaluate", "evaluation", "predict", "zeroshot", "visualize", "user_files"]),
    ("entry points", ["main", "demo", "demo_report", "predict_cli"]),
]


def module_name(path):
    """macosnet_jax/losses/inlier.py -> 'losses.inlier'; a package's __init__.py -> the package's name."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(name):
    """The index in LAYERS of a module name such as 'losses.inlier' (the package itself: None)."""
    best = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if name == prefix or name.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (index, len(prefix))
    return None if best is None else best[0]


def imported_modules(path, text=None):
    """The package-internal modules `path` imports (absolute or relative), as module names; `text`: its source
    (default: read from `path`)."""
    here = module_name(path).split(".") if module_name(path) else []
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text() if text is None else text, str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("macosnet_jax."):
                    found.add(alias.name[len("macosnet_jax."):])
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here if is_package else here[:-1]
                base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                stem = ".".join(base + ([node.module] if node.module else []))
            elif node.module == "macosnet_jax":
                stem = ""
            elif node.module and node.module.startswith("macosnet_jax."):
                stem = node.module[len("macosnet_jax."):]
            else:
                continue
            for alias in node.names:  # `from macosnet_jax.models import resnet` imports models.resnet
                candidate = f"{stem}.{alias.name}" if stem else alias.name
                found.add(candidate if _exists(candidate) else stem)
    return {name for name in found if name}


def _exists(name):
    path = PACKAGE.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if module_name(p)}


def test_every_module_has_a_layer():
    assert [name for name in MODULES if layer_of(name) is None] == []


def test_the_leaves_import_nothing_else_of_the_package():
    for name in LAYERS[0][1]:
        assert imported_modules(MODULES[name]) - set(LAYERS[0][1]) == set(), name


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_import_runs_upwards(name):
    own = layer_of(name)
    upward = sorted(f"{target} ({LAYERS[layer_of(target)][0]})" for target in imported_modules(MODULES[name])
                    if layer_of(target) is not None and layer_of(target) > own)
    assert upward == [], f"{name} ({LAYERS[own][0]}) imports from a higher layer"


def test_no_import_cycle():
    graph = {name: {t for t in imported_modules(path) if t in MODULES and t != name}
             for name, path in MODULES.items()}
    # A package's __init__ re-exporting its own modules is not a cycle: drop edges from a package to its children.
    for name in graph:
        graph[name] = {t for t in graph[name] if not t.startswith(name + ".")}
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack + [target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_the_checker_sees_an_upward_import():
    """The checker itself: a losses module importing the trainer and a stage is reported (so the tests above can
    fail)."""
    names = imported_modules(PACKAGE / "losses" / "inlier.py",
                             text="from macosnet_jax import train\nfrom ..stages import joint\nimport numpy\n")
    assert names == {"train", "stages.joint"}
    assert all(layer_of(n) > layer_of("losses.inlier") for n in names)
