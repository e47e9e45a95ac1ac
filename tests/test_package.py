"""The package's shape: data flows one way, so no module imports one that comes after it."""

import ast
from pathlib import Path

import diamusic

# each module may import only modules listed before it (lazy imports inside functions included)
ORDER = [
    "errors", "stats", "patterns", "tokens", "pitch", "corpus", "render", "codecs", "model", "flops", "metrics",
    "tracking", "data", "data.sources", "data.dataset", "data.prepare", "data.inspect",
    "config", "runs", "generate", "train", "eval", "ablate", "report", "cli",
]  # fmt: skip
ROOT = Path(diamusic.__file__).parent


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("diamusic"):
            base = node.module.removeprefix("diamusic").lstrip(".")
            # `from diamusic import corpus` and `from diamusic.data import dataset` name modules
            names = [f"{base}.{a.name}".lstrip(".") for a in node.names]
            found |= {n for n in names if n in ORDER} or ({base} if base else set())
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("diamusic.") for a in node.names if a.name.startswith("diamusic.")}
    return found


def test_every_module_is_placed_in_the_order():
    modules = {str(p.relative_to(ROOT).with_suffix("")).replace("/", ".").removesuffix(".__init__") for p in
               ROOT.rglob("*.py")} - {"__init__"}  # fmt: skip
    assert modules == set(ORDER)


def test_no_module_imports_one_after_it():
    for module in ORDER:
        path = ROOT / (module.replace(".", "/") + ".py")
        if not path.exists():
            path = ROOT / module.replace(".", "/") / "__init__.py"
        later = {
            m for m in imports_of(path) if m != module and (m not in ORDER or ORDER.index(m) > ORDER.index(module))
        }
        assert not later, f"{module} imports {sorted(later)}, which come after it"
