"""The package's shape: imports go down only (shared parts -> the LLM client -> stages), never in a circle, and the
shared parts never import the command line. Built from the source with `ast`, so a lazy import inside a function
counts as much as one at the top."""

import ast
import pathlib

REPO = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = REPO / "alpaca"

# Lower layers first. A module may import its own layer (without a cycle) or a lower one, never a higher one.
LAYERS = [
    ("alpaca", "alpaca.errors"),
    ("alpaca.cli", "alpaca.files", "alpaca.prompts"),
    ("alpaca.llm",),
    ("alpaca.generate", "alpaca.train", "alpaca.infer", "alpaca.weights", "alpaca.evaluate", "alpaca.data"),
    ("alpaca.testing",),
]
SHARED = ("alpaca.errors", "alpaca.files", "alpaca.prompts", "alpaca.llm")  # library code: no command line


def module_name(path: pathlib.Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def imports_of(path: pathlib.Path) -> set[str]:
    """The package modules `path` imports (`from alpaca.x import y` counts as alpaca.x.y when that is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "alpaca":
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                is_module = (REPO / (candidate.replace(".", "/") + ".py")).exists() or \
                    (REPO / candidate.replace(".", "/")).is_dir()
                found.add(candidate if is_module else node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "alpaca"}
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: {d for d in imports_of(path) if d != name} for name, path in modules.items()}


def layer_of(name: str) -> int:
    best = max((prefix for layer in LAYERS for prefix in layer if name == prefix or name.startswith(prefix + ".")),
               key=len)
    return next(i for i, layer in enumerate(LAYERS) if best in layer)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle found by a depth-first search (each reported from where it was first closed)."""
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return found


def test_the_checker_sees_cycles_and_upward_imports():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    assert layer_of("alpaca.llm.client") < layer_of("alpaca.evaluate.judge") and layer_of("alpaca.errors") == 0


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_imports_go_down_only():
    upward = [f"{name} imports {dep}" for name, deps in graph().items() for dep in deps
              if layer_of(dep) > layer_of(name)]
    assert upward == []


def test_library_code_never_imports_the_command_line():
    offenders = [name for name, deps in graph().items()
                 if name.startswith(SHARED) and "alpaca.cli" in deps]
    assert offenders == []


def test_no_sys_path_edits_outside_tests():
    edits = [str(path.relative_to(REPO)) for path in REPO.rglob("*.py")
             if ".venv" not in path.parts and "tests" not in path.parts
             and "sys.path" in path.read_text(encoding="utf-8")]
    assert edits == []


def test_the_top_level_holds_only_the_entry_points():
    scripts = sorted(path.name for path in REPO.glob("*.py"))
    assert scripts == ["data_tools.py", "generate_instruction.py", "inference.py", "judge.py", "train.py",
                       "train_dpo.py", "utils.py", "weight_diff.py"]


def test_tests_mirror_the_package():
    """Each stage folder of alpaca/ has its tests in the folder of the same name under tests/, and tests/ has no
    folder the package lacks (the shared modules, the scripts and the docs are tested at its top)."""
    stages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    test_folders = {p.name for p in (REPO / "tests").iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert test_folders == stages
    for folder in test_folders:
        assert list((REPO / "tests" / folder).glob("test_*.py")), folder
