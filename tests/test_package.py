"""The package's shape: data flows one way, so no module imports one that comes after it."""

import ast
from pathlib import Path

import diamusic

# each module may import only modules listed before it (lazy imports inside functions included)
ORDER = [
    "errors", "threads", "progress", "locks", "stats", "patterns", "tokens", "pitch", "audio_metrics", "clap",
    "tagging", "seeding", "corpus", "synth", "instruments", "harmony", "captions", "arrangement", "playback", "render",
    "codecs", "model", "flops", "metrics",
    "tracking", "data", "data.sources", "data.hf", "data.dataset", "data.prepare", "data.inspect",
    "checkpoints", "config", "teacher_forced", "runs", "optim", "generate", "export", "trainer", "train", "eval",
    "ablate", "report", "launch", "demo", "cli",
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


def modules_imported_by_name(tree: ast.AST) -> dict[str, str]:
    """Local name -> diamusic module, for `from diamusic import x` / `import diamusic.x as y`."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("diamusic"):
            base = node.module.removeprefix("diamusic").lstrip(".")
            for a in node.names:
                if f"{base}.{a.name}".lstrip(".") in ORDER:
                    names[a.asname or a.name] = f"{base}.{a.name}".lstrip(".")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("diamusic.") and a.asname:
                    names[a.asname] = a.name.removeprefix("diamusic.")
    return names


def private_uses(path: Path) -> list[str]:
    """Another module's `_private` names: imported from it, or reached through it as an attribute."""
    tree = ast.parse(path.read_text())
    modules = modules_imported_by_name(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("diamusic"):
            found += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_") and a.name[1] != "_"]
        elif (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
        ):
            found.append(f"{modules[node.value.id]}.{node.attr}")
    return found


def test_no_module_uses_another_modules_private_names():
    offenders = {p.relative_to(ROOT).as_posix(): private_uses(p) for p in ROOT.rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_private_uses_are_found():
    """The check above can fail: both spellings of a private use are caught."""
    import tempfile

    source = "from diamusic.pitch import _hidden\nfrom diamusic import corpus\ncorpus._synth_into(1)\n"
    with tempfile.NamedTemporaryFile("w", suffix=".py") as f:
        f.write(source)
        f.flush()
        assert private_uses(Path(f.name)) == ["diamusic.pitch._hidden", "corpus._synth_into"]


LONGEST_FUNCTION = 80  # lines; the CLI's argument table is one long list by nature
LONG_BY_NATURE = {"cli.py:build_parser"}


def test_no_function_is_much_longer_than_the_anchors():
    long = []
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                where = f"{path.relative_to(ROOT).as_posix()}:{node.name}"
                lines = node.end_lineno - node.lineno + 1
                if lines > LONGEST_FUNCTION and where not in LONG_BY_NATURE:
                    long.append(f"{where} ({lines} lines)")
    assert long == []
