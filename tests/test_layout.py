"""The house: rooms by concern, imports that only run down, a file map per room, old import paths forwarded."""

import ast
import importlib
import inspect
import sys
import warnings
from pathlib import Path

import pytest

import lit_align
from lit_align import moved

REPO = Path(__file__).resolve().parents[1]
# the rooms from the bottom up: a module imports from its own room or from a room on a lower layer, never above
LAYERS = [
    {"errors"},
    {"hparams", "batches", "shipped", "moved", "optim"},
    {"losses"},
    {"models"},
    {"metrics", "rollouts", "reference", "datamodules"},
    {"rewards"},
    {"tools"},
    {"training"},
    {"algorithms"},
    {"callbacks"},
    {"commands"},
    {"__init__", "__main__"},
]
LAYER = {room: i for i, rooms in enumerate(LAYERS) for room in rooms}
ROOMS = ["models", "rollouts", "reference", "training", "callbacks", "commands", "losses", "algorithms", "rewards",
         "tools"]  # fmt: skip


def module_files() -> dict[str, Path]:
    """Every module of the package by its installed dotted name (``datamodules/`` installs as lit_align.datamodules)."""
    files = {}
    for root, prefix in ((REPO / "lit_align", "lit_align"), (REPO / "datamodules", "lit_align.datamodules")):
        for path in root.rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            files[".".join((prefix, *parts))] = path
    return files


FILES = module_files()


def imports(path: Path) -> set[str]:
    """The lit_align modules a file imports, at any depth of the file (function-level imports included):
    ``from lit_align.x import y`` counts as lit_align.x.y when that is a module, else as lit_align.x."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("lit_align")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("lit_align"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in FILES else node.module)
    return found


GRAPH = {name: {m for m in imports(path) if m in FILES and m != name} for name, path in FILES.items()}


def room(module: str) -> str:
    parts = module.split(".")
    if module == "lit_align":
        return "__init__"
    return parts[1]


def test_every_module_is_in_a_room_with_a_layer():
    assert {room(m) for m in FILES} <= set(LAYER), "place the new room in LAYERS"


def test_no_import_cycle():
    """Depth-first over the module graph; a module met again while still on the path closes a cycle."""
    state: dict[str, str] = {}
    path: list[str] = []
    cycles = []

    def visit(node):
        state[node] = "open"
        path.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == "open":
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = "done"

    for node in sorted(GRAPH):
        if node not in state:
            visit(node)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_cycle_check_finds_a_cycle(monkeypatch):
    """The check above can fail: a back edge from tools.options to rewards.reward_set (the circle of issue 31,
    rewards.reward_set -> tools.multi_turn -> tools.options -> rewards.reward_set) is found."""
    monkeypatch.setitem(GRAPH, "lit_align.rewards.reward_set", GRAPH["lit_align.rewards.reward_set"] |
                        {"lit_align.tools.multi_turn"})  # fmt: skip
    monkeypatch.setitem(GRAPH, "lit_align.tools.options", GRAPH["lit_align.tools.options"] |
                        {"lit_align.rewards.reward_set"})  # fmt: skip
    with pytest.raises(AssertionError, match="reward_set"):
        test_no_import_cycle()


def test_no_import_runs_back_up():
    upward = [f"{m} ({room(m)}, layer {LAYER[room(m)]}) imports {t} ({room(t)}, layer {LAYER[room(t)]})"
              for m, targets in GRAPH.items() for t in targets if LAYER[room(t)] > LAYER[room(m)]]  # fmt: skip
    assert not upward, "\n".join(upward)


def test_imports_are_read_at_every_depth():
    """Function-level imports count: rewards/resolve.py imports the reward-model scorer inside a function."""
    assert "lit_align.rewards.model_scorer" in GRAPH["lit_align.rewards.resolve"]


@pytest.mark.parametrize("name", [*ROOMS, "datamodules"])
def test_each_room_has_a_file_map_of_exactly_its_files(name):
    folder = REPO / ("datamodules" if name == "datamodules" else f"lit_align/{name}")
    doc = ast.get_docstring(ast.parse((folder / "__init__.py").read_text())) or ""
    files = {p.name for p in folder.glob("*.py")} - {"__init__.py"}
    named = {word.strip(",:;()") for word in doc.split() if word.strip(",:;()").endswith(".py")}
    assert files <= named, f"{name}/__init__.py's map leaves out {sorted(files - named)}"
    assert named <= files, f"{name}/__init__.py's map names files that do not exist: {sorted(named - files)}"


def test_the_top_level_holds_only_plumbing():
    top = sorted(p.stem for p in (REPO / "lit_align").glob("*.py"))
    assert top == ["__init__", "__main__", "batches", "errors", "hparams", "metrics", "moved", "optim", "shipped"]


def own_classes(cls: type) -> list[type]:
    return [k for k in cls.__mro__ if k.__module__.startswith("lit_align")]


@pytest.mark.parametrize("name", [n for n in lit_align.__all__ if n[0].isupper()])
def test_no_attribute_shadows_a_method(name):
    """``self.<name> = ...`` anywhere along an algorithm's classes never names one of their methods (a hook
    replaced by a value, as ReinforcePP's ``self.baseline`` string once hid the base's ``baseline()``)."""
    cls = getattr(lit_align, name)
    methods = {n for k in own_classes(cls) for n, v in vars(k).items() if inspect.isfunction(v)}
    shadows = []
    for k in own_classes(cls):
        for node in ast.walk(ast.parse(inspect.getsource(sys.modules[k.__module__]))):
            if isinstance(node, ast.ClassDef) and node.name == k.__name__:
                for target in ast.walk(node):
                    if (isinstance(target, ast.Attribute) and isinstance(target.ctx, ast.Store)
                            and isinstance(target.value, ast.Name) and target.value.id == "self"
                            and target.attr in methods):  # fmt: skip
                        shadows.append(f"{k.__name__}: self.{target.attr} = ... (line {target.lineno})")
    assert not shadows, shadows


@pytest.mark.parametrize("old", sorted(moved.MOVED))
def test_an_old_module_path_imports_its_new_home_with_a_warning(old):
    homes = [importlib.import_module(h) for h in moved.MOVED[old]]
    module = importlib.import_module(old)
    name = next(n for n, v in vars(homes[0]).items() if getattr(v, "__module__", None) == homes[0].__name__)
    with pytest.warns(FutureWarning, match=f"{old}.{name} is now {homes[0].__name__}.{name}"):
        value = getattr(module, name)
    assert value is getattr(homes[0], name)
    with pytest.raises(AttributeError, match="has no attribute"):
        module.no_such_name  # noqa: B018


@pytest.mark.parametrize("old, new", [
    ("lit_align.rollout.HFGenerate", "lit_align.rollouts.hf.HFGenerate"),
    ("lit_align.rollout.seeded_rng", "lit_align.rollouts.sampling.seeded_rng"),
    ("lit_align.console.table_cell", "lit_align.metrics.table_cell"),
    ("lit_align.evaluation.summarize", "lit_align.commands.report.summarize"),
])  # fmt: skip
def test_a_name_that_left_its_module_is_found_where_it_went(old, new):
    module, _, name = old.rpartition(".")
    sys.modules.get(module) and vars(sys.modules[module]).pop(name, None)  # not yet cached by an earlier import
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(f"from {module} import {name} as value", namespace := {})
    home, _, _ = new.rpartition(".")
    assert namespace["value"] is getattr(importlib.import_module(home), name)
    assert any(f"is now {new}" in str(w.message) for w in caught), [str(w.message) for w in caught]


@pytest.mark.parametrize("old, new", [
    ("lit_align.models.apply_lora", "lit_align.models.loading.apply_lora"),
    ("lit_align.models.load_model", "lit_align.models.loading.load_model"),
    ("lit_align.reference.ReferenceMixin", "lit_align.reference.mixin.ReferenceMixin"),
])  # fmt: skip
def test_a_flat_module_that_became_a_package_still_gives_its_names_quietly(old, new):
    """No warning here: jsonargparse probes a class's parent packages on every command line."""
    module, _, name = old.rpartition(".")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exec(f"from {module} import {name} as value", namespace := {})
    home, _, _ = new.rpartition(".")
    assert namespace["value"] is getattr(importlib.import_module(home), name)
    with pytest.raises(ImportError):
        exec(f"from {module} import no_such_name")


def test_a_command_line_warns_about_nothing(tmp_path):
    """A recipe's parse touches no old path (what a user without old paths sees)."""
    import subprocess

    cmd = [sys.executable, "-W", "error::FutureWarning", str(REPO / "recipes/dpo.py"), "fit", "--print_config"]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "FutureWarning" not in result.stderr, result.stderr[-2000:]


def test_a_config_naming_an_old_callback_path_still_builds_it():
    """What a user's YAML holds (``class_path: lit_align.preemption.StopOnSignal``) goes through jsonargparse."""
    from jsonargparse import ArgumentParser
    from lightning.pytorch import Callback

    from lit_align.callbacks import StepProgressBar, StopOnSignal

    parser = ArgumentParser()
    parser.add_argument("--callbacks", type=list[Callback])
    with pytest.warns(FutureWarning, match="lit_align.preemption.StopOnSignal is now"):
        config = parser.parse_args(["--callbacks", '[{"class_path": "lit_align.preemption.StopOnSignal"}, '
                                    '{"class_path": "lit_align.console.StepProgressBar"}]'])  # fmt: skip
    built = parser.instantiate_classes(config).callbacks
    assert [type(c) for c in built] == [StopOnSignal, StepProgressBar]


def test_the_architecture_page_maps_every_file():
    """docs/architecture.md's map names every module of the package (the page stays true to the folders)."""
    page = (REPO / "docs" / "architecture.md").read_text()
    missing = [str(path.relative_to(REPO)) for path in FILES.values()
               if path.name != "__init__.py" and path.name not in page]  # fmt: skip
    assert not missing, missing
