"""The Slicer extension, checked without Slicer (Slicer cannot be installed here).

What only Slicer can run (the widgets, the scene, the end-to-end <Module>Test classes) is kept thin; this
file checks everything around it: the .ui files compile with Qt's own uic and declare their Slicer/CTK
widgets, every name a module binds or uses exists in its .ui, the module files compile and pass ruff, the
CMake lists name files that exist (and every file that must be installed), the ExtensionsIndex entry
follows the catalog schema, the modules import only the engine's job interface, the command line the
registration module builds parses with the engine's CLI, and the shared helpers (job runner with
process-tree cancel, landmarks, dependencies, devices, reports) behave. Seconds, no registration is run.
"""
from __future__ import annotations

import ast
import inspect
import json
import os
import py_compile
import re
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from unleash.jobs import register_command, sample_command, train_command
from unleash.jobspec import JOBS
from unleash.modelfile import find_model_files, model_kind
from unleash.train.rundir import list_runs, read_metrics, run_summary
from UnleashCommon import jobEnvironment, pythonExecutable
from UnleashCommon.dependencies import (
    PIP_REQUIREMENTS,
    PROTECTED,
    constraintsText,
    installPlan,
    missingPackages,
    numpyTorchClash,
)
from UnleashCommon.engine import (
    PROBE_SNIPPET,
    copyTrainingPairs,
    describeRun,
    deviceChoices,
    deviceLabel,
    lowMemoryWarning,
    probeCommand,
)
from UnleashCommon.landmarks import HEADER, rasToIjk, writeLandmarksCsv
from UnleashCommon.results import reportHtml, reportSummary
from UnleashCommon.runner import JobRunner, describeProgress, formatSeconds

REPO = Path(__file__).resolve().parents[1]
MODULES = ["UnleashRegistration", "UnleashSampler", "UnleashTraining"]
VENV_BIN = Path(sys.executable).parent


def module_python_files() -> list[Path]:
    return sorted(p for m in [*MODULES, "UnleashCommon"] for p in (REPO / m).rglob("*.py") if "__pycache__" not in p.parts)


def tool(name: str) -> str:
    found = VENV_BIN / name
    if found.is_file():
        return str(found)
    found = shutil.which(name)
    if not found:
        pytest.skip(f"{name} is not installed")
    return found


# ---------------------------------------------------------------------------------------------------
# .ui files
# ---------------------------------------------------------------------------------------------------

UI_FILES = sorted((REPO / m / "Resources" / "UI" / f"{m}.ui") for m in MODULES)


@pytest.mark.parametrize("ui", UI_FILES, ids=lambda p: p.name)
def test_ui_compiles_with_pyside6_uic(ui, tmp_path):
    out = tmp_path / "ui.py"
    run = subprocess.run([tool("pyside6-uic"), str(ui), "-o", str(out)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert f"class Ui_{ui.stem}" in out.read_text()


@pytest.mark.parametrize("ui", UI_FILES, ids=lambda p: p.name)
def test_ui_declares_every_slicer_and_ctk_widget(ui):
    root = ET.parse(ui).getroot()
    declared = {c.findtext("class"): c for c in root.iter("customwidget")}
    for name, custom in declared.items():
        assert custom.findtext("header") == f"{name}.h", f"{name}: header"
        assert custom.findtext("extends"), f"{name}: extends"
        base = custom.findtext("extends")
        while base in declared:  # qSlicerMarkupsPlaceWidget extends qSlicerWidget extends QWidget
            base = declared[base].findtext("extends")
        assert base.startswith("Q"), f"{name} does not extend a Qt class in the end ({base})"
    used = {w.get("class") for w in root.iter("widget")}
    for cls in used:
        assert cls.startswith("Q") or cls in declared, f"{ui.name}: {cls} is used but not declared in <customwidgets>"
    assert root.find("widget").get("class") == "qMRMLWidget"
    assert root.find("widget").get("name") == ui.stem


def ui_widget_names(ui: Path) -> set[str]:
    return {w.get("name") for w in ET.parse(ui).getroot().iter("widget")}


def ui_parameter_bindings(ui: Path) -> dict[str, str]:
    """SlicerParameterName -> widget name: what connectGui binds."""
    bindings = {}
    for widget in ET.parse(ui).getroot().iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bindings[prop.findtext("string")] = widget.get("name")
    return bindings


def parameter_node_fields(source: Path) -> dict[str, str]:
    """name -> annotation source of the @parameterNodeWrapper class in a module."""
    tree = ast.parse(source.read_text())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(
                getattr(d, "id", None) == "parameterNodeWrapper" for d in node.decorator_list):
            return {s.target.id: ast.unparse(s.annotation) for s in node.body if isinstance(s, ast.AnnAssign)}
    raise AssertionError(f"{source.name}: no @parameterNodeWrapper class")


@pytest.mark.parametrize("module", MODULES)
def test_gui_bindings_match_the_parameter_node(module):
    """Every SlicerParameterName is a parameter of the module's parameterNodeWrapper class, of a type the
    widget can show (a typo here only shows up inside Slicer, as a silently unbound widget)."""
    ui = REPO / module / "Resources" / "UI" / f"{module}.ui"
    fields = parameter_node_fields(REPO / module / f"{module}.py")
    classes = {w.get("name"): w.get("class") for w in ET.parse(ui).getroot().iter("widget")}
    compatible = {"QSpinBox": ("int",), "QDoubleSpinBox": ("float",), "QCheckBox": ("bool",),
                  "QComboBox": ("Choice",), "qMRMLNodeComboBox": ("vtkMRML",), "ctkDirectoryButton": ("pathlib.Path",)}
    bindings = ui_parameter_bindings(ui)
    assert bindings, f"{ui.name} binds nothing"
    for parameter, widget in bindings.items():
        assert parameter in fields, f"{ui.name}: {widget} is bound to '{parameter}', which {module}.py does not define"
        wanted = compatible[classes[widget]]
        assert any(w in fields[parameter] for w in wanted), \
            f"{parameter}: {fields[parameter]} cannot be shown by {classes[widget]}"


@pytest.mark.parametrize("module", MODULES)
def test_module_uses_only_widgets_its_ui_has(module):
    source = (REPO / module / f"{module}.py").read_text()
    used = set(re.findall(r"self\.ui\.(\w+)", source))
    missing = used - ui_widget_names(REPO / module / "Resources" / "UI" / f"{module}.ui")
    assert not missing, f"{module}.py uses self.ui.{sorted(missing)} that the .ui does not have"


# ---------------------------------------------------------------------------------------------------
# Python files of the modules
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", module_python_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_module_file_compiles(path, tmp_path):
    py_compile.compile(str(path), cfile=str(tmp_path / "out.pyc"), doraise=True)


def test_module_files_pass_ruff():
    run = subprocess.run([tool("ruff"), "check", *MODULES, "UnleashCommon", "Testing/test_slicer_extension.py"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


def test_each_module_has_widget_logic_and_a_real_test_class():
    for module in MODULES:
        tree = ast.parse((REPO / module / f"{module}.py").read_text())
        classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
        for suffix in ("", "Widget", "Logic", "Test", "ParameterNode"):
            assert module + suffix in classes, f"{module}.py has no class {module}{suffix}"
        test = classes[module + "Test"]
        methods = {f.name for f in test.body if isinstance(f, ast.FunctionDef)}
        tests = {m for m in methods if m.startswith("test_")}
        assert tests, f"{module}Test has no test_ methods"
        run_test = next(f for f in test.body if isinstance(f, ast.FunctionDef) and f.name == "runTest")
        called = {c.func.attr for c in ast.walk(run_test) if isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute)}
        assert tests <= called, f"{module}Test.runTest does not run {sorted(tests - called)}"


# The engine modules that need only the standard library: the only ones the modules import.
TORCH_FREE_ENGINE = {"unleash.jobs", "unleash.jobspec", "unleash.modelfile", "unleash.train.rundir"}
HEAVY = {"torch", "numpy", "scipy", "SimpleITK", "safetensors", "monai"}


def test_the_engine_modules_that_the_modules_use_do_not_load_torch_or_numpy():
    code = f"import sys; import {', '.join(sorted(TORCH_FREE_ENGINE))}; print(sorted({{'torch', 'numpy'}} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("path", module_python_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_modules_import_only_the_engines_job_interface(path):
    """The modules talk to the engine through jobs: of the engine they import only its torch-free modules
    (the job options and command lines, model-file headers, run folders), and nothing heavy (torch, numpy)
    at module level, so that opening a module stays instant. Everything else runs in the job's process."""
    tree = ast.parse(path.read_text())
    top_level = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        else:
            continue
        for module in modules:
            if module == "unleash" or module.startswith("unleash."):
                assert module in TORCH_FREE_ENGINE, f"{path.name}:{node.lineno} imports {module}"
            if id(node) in top_level:
                assert module.split(".")[0] not in HEAVY, \
                    f"{path.name}:{node.lineno} imports {module} at module level (heavy; import it where needed)"


# ---------------------------------------------------------------------------------------------------
# CMake
# ---------------------------------------------------------------------------------------------------

def cmake_commands(path: Path) -> list[tuple[str, list[str]]]:
    """(command, arguments) of a CMakeLists.txt: comments dropped (outside quotes), quotes removed."""
    text, calls, i = path.read_text(), [], 0
    pattern = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(")
    while True:
        match = pattern.search(text, i)
        if not match:
            return calls
        if "#" in text[text.rfind("\n", 0, match.start()) + 1:match.start()]:  # the call is inside a comment
            i = text.index("\n", match.start()) if "\n" in text[match.start():] else len(text)
            continue
        args, token, depth, j, quoted = [], "", 1, match.end(), False
        while depth:
            ch = text[j]
            if quoted:
                if ch == '"':
                    quoted = False
                    args.append(token)
                    token = ""
                else:
                    token += ch
            elif ch == '"':
                quoted = True
            elif ch == "#":
                j = text.index("\n", j)
                continue
            elif ch in "()":
                depth += 1 if ch == "(" else -1
                if depth:
                    token += ch
            elif ch.isspace():
                if token:
                    args.append(token)
                token = ""
            else:
                token += ch
            j += 1
        if token:
            args.append(token)
        calls.append((match.group(1), args))
        i = j


def resolve(value: str, variables: dict[str, list[str]]) -> list[str]:
    def one(match):
        name = match.group(1)
        assert name in variables, f"${{{name}}} is not set"
        return ";".join(variables[name])

    expanded = re.sub(r"\$\{(\w+)\}", one, value)
    return [v for v in expanded.split(";") if v]


def cmake_listed_files(path: Path) -> dict[str, list[tuple[Path, str]]]:
    """target -> [(file, SCRIPTS|RESOURCES)] of slicerMacroBuildScriptedModule and ctkMacroCompilePythonScript,
    with the variables set by set(), get_filename_component(... ABSOLUTE) and file(GLOB ... RELATIVE ...)."""
    here = path.parent
    variables: dict[str, list[str]] = {"CMAKE_CURRENT_SOURCE_DIR": [str(here)], "CMAKE_BINARY_DIR": ["<build>"],
                                       "Slicer_QTSCRIPTEDMODULES_LIB_DIR": ["<lib>"],
                                       "Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR": ["<install>"]}
    listed: dict[str, list[tuple[Path, str]]] = {}
    for command, args in cmake_commands(path):
        lower = command.lower()
        if lower == "set":
            variables[args[0]] = [v for a in args[1:] for v in resolve(a, variables)]
        elif lower == "get_filename_component" and args[2] == "ABSOLUTE":
            variables[args[0]] = [str(Path(resolve(args[1], variables)[0]).resolve())]
        elif lower == "file" and args[0] in ("GLOB", "GLOB_RECURSE"):
            rest = args[2:]
            base = None
            if rest and rest[0] == "RELATIVE":
                base, rest = resolve(rest[1], variables)[0], rest[2:]
            matches = []
            for pattern in rest:
                for p in resolve(pattern, variables):
                    glob = Path(p)
                    matches += sorted(glob.parent.rglob(glob.name) if args[0] == "GLOB_RECURSE" else glob.parent.glob(glob.name))
            variables[args[1]] = [str(m.relative_to(base)) if base else str(m) for m in matches]
        elif lower in ("slicermacrobuildscriptedmodule", "ctkmacrocompilepythonscript"):
            keywords = {"NAME", "TARGET_NAME", "SCRIPTS", "RESOURCES", "SOURCE_DIR", "DESTINATION_DIR", "INSTALL_DIR",
                        "WITH_GENERIC_TESTS", "WITH_SUBDIR", "VERBOSE", "NO_INSTALL_SUBDIR", "GLOBAL_TARGET"}
            parsed, key = {}, None
            for arg in args:
                if arg in keywords:
                    key = arg
                    parsed.setdefault(key, [])
                else:
                    parsed.setdefault(key, []).extend(resolve(arg, variables))
            target = (parsed.get("NAME") or parsed.get("TARGET_NAME"))[0]
            source_dir = Path(parsed["SOURCE_DIR"][0]) if parsed.get("SOURCE_DIR") else here
            listed[target] = [(source_dir / f, kind) for kind in ("SCRIPTS", "RESOURCES") for f in parsed.get(kind, [])]
            listed[target + ":options"] = [(Path(o), "OPTION") for o in parsed if o]
    return listed


def module_cmake_lists() -> list[Path]:
    return [REPO / m / "CMakeLists.txt" for m in MODULES]


@pytest.mark.parametrize("cmake", module_cmake_lists(), ids=lambda p: p.parent.name)
def test_every_file_a_cmakelists_lists_exists(cmake):
    listed = cmake_listed_files(cmake)
    assert cmake.parent.name in listed, f"{cmake}: no slicerMacroBuildScriptedModule(NAME {cmake.parent.name})"
    for target, files in listed.items():
        for path, kind in files:
            if kind == "OPTION":
                continue
            # Slicer accepts a script given without its .py (SlicerMacroBuildScriptedModule.cmake)
            shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
            assert path.is_file() or (kind == "SCRIPTS" and path.with_name(path.name + ".py").is_file()), \
                f"{cmake.relative_to(REPO)} ({target}): {shown} does not exist"
    options = {p.name for p, _ in listed[cmake.parent.name + ":options"]}
    assert "WITH_GENERIC_TESTS" in options


@pytest.mark.parametrize("cmake", module_cmake_lists(), ids=lambda p: p.parent.name)
def test_every_module_file_is_listed_in_its_cmakelists(cmake):
    """A .py, .ui or icon that is not listed is not installed, and the module breaks only once installed."""
    module_dir = cmake.parent
    listed = {p.resolve() for p, kind in cmake_listed_files(cmake)[module_dir.name]}
    present = {p.resolve() for p in module_dir.rglob("*") if p.is_file() and "__pycache__" not in p.parts
               and p.name != "CMakeLists.txt" and p.suffix in (".py", ".ui", ".png", ".txt", ".json")}
    unlisted = sorted(str(p.relative_to(REPO)) for p in present - listed)
    assert not unlisted, f"not listed in {cmake.relative_to(REPO)}: {unlisted}"


def test_the_shared_helpers_are_installed_whole_next_to_the_modules():
    """Every .py of UnleashCommon is listed, and installed as qt-scripted-modules/UnleashCommon/... (with the
    repository root as SOURCE_DIR and no subfolder), where every module imports it without a sys.path change."""
    listed = cmake_listed_files(REPO / "UnleashCommon" / "CMakeLists.txt")
    assert "UnleashCommon" in listed, "UnleashCommon/CMakeLists.txt does not install the shared helpers"
    scripts = {p.resolve() for p, kind in listed["UnleashCommon"] if kind == "SCRIPTS"}
    present = {p.resolve() for p in (REPO / "UnleashCommon").rglob("*.py") if "__pycache__" not in p.parts}
    assert scripts == present, f"UnleashCommon/CMakeLists.txt: missing {sorted(map(str, present - scripts))}"
    for path, _kind in listed["UnleashCommon"]:
        assert path.resolve().relative_to(REPO).parts[0] == "UnleashCommon"
    options = {p.name for p, _ in listed["UnleashCommon:options"]}
    assert "NO_INSTALL_SUBDIR" in options and "SOURCE_DIR" in options
    for module in MODULES:
        assert "sys.path" not in (REPO / module / f"{module}.py").read_text(), f"{module}.py changes sys.path"


def test_the_engine_is_vendored_whole():
    """Every .py of the `unleash` package is listed, and installed as qt-scripted-modules/unleash/..."""
    listed = cmake_listed_files(REPO / "UnleashCommon" / "CMakeLists.txt")
    assert "UnleashEngine" in listed, "UnleashCommon/CMakeLists.txt does not vendor the engine"
    scripts = {p.resolve() for p, kind in listed["UnleashEngine"] if kind == "SCRIPTS"}
    engine = {p.resolve() for p in (REPO / "unleash").rglob("*.py") if "__pycache__" not in p.parts}
    assert engine == scripts, (
        f"the engine file list is out of date (run: python tools/update_slicer_engine_files.py): "
        f"missing {sorted(str(p.relative_to(REPO)) for p in engine - scripts)}, "
        f"gone {sorted(str(p.relative_to(REPO)) for p in scripts - engine)}")
    for path, _kind in listed["UnleashEngine"]:
        # relative to the repository root: the installed path starts with unleash/
        assert path.resolve().relative_to(REPO).parts[0] == "unleash"
    options = {p.name for p, _ in listed["UnleashEngine:options"]}
    assert "NO_INSTALL_SUBDIR" in options and "SOURCE_DIR" in options
    resources = {p.resolve() for p, kind in listed["UnleashEngine"] if kind == "RESOURCES"}
    shipped = {p.resolve() for p in (REPO / "unleash" / "weights").glob("*") if p.suffix in (".safetensors", ".md")}
    assert resources == shipped


def test_top_level_cmakelists_is_a_slicer_extension_of_three_modules():
    calls = cmake_commands(REPO / "CMakeLists.txt")
    names = [c.lower() for c, _ in calls]
    variables = {args[0]: args[1:] for c, args in calls if c.lower() == "set"}
    assert ("project", ["UnleashRegistration"]) in calls
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert variables.get(key) and variables[key][0], f"{key} is not set"
    assert variables["EXTENSION_DEPENDS"] == ["PyTorch"]
    assert variables["EXTENSION_CATEGORY"] == ["Registration"]
    assert ("find_package", ["Slicer", "REQUIRED"]) in calls
    assert ("include", ["${Slicer_USE_FILE}"]) in calls
    assert [args[0] for c, args in calls if c == "add_subdirectory"] == ["UnleashCommon", *MODULES]
    includes = [args[0] for c, args in calls if c == "include"]
    assert "${Slicer_EXTENSION_GENERATE_CONFIG}" in includes or "slicer_extension_generate_config" in names
    assert "${Slicer_EXTENSION_CPACK}" in includes or "slicer_extension_cpack" in names
    assert names.index("find_package") < names.index("add_subdirectory")


def test_screenshot_urls_name_committed_screenshots():
    variables = {args[0]: args[1:] for c, args in cmake_commands(REPO / "CMakeLists.txt") if c == "set"}
    prefix = "https://raw.githubusercontent.com/unleash-registration/UnleashRegistration/main/"
    urls = variables["EXTENSION_SCREENSHOTURLS"][0].split()
    assert len(urls) >= 2
    for url in urls:
        assert url.startswith(prefix), url
        path = REPO / url[len(prefix):]
        assert path.parent == REPO / "Resources" / "Screenshots" and path.is_file(), f"{url}: no such file"
        width, height = png_size(path)
        assert width >= 640 and height >= 320
    assert "(planned)" not in variables["EXTENSION_DESCRIPTION"][0]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_icons_and_license():
    assert png_size(REPO / "Resources" / "Icons" / "UnleashRegistration.png") == (128, 128)
    for module in MODULES:
        assert png_size(REPO / module / "Resources" / "Icons" / f"{module}.png")[0] >= 64
    assert "Apache License" in (REPO / "LICENSE").read_text()[:300]


# ---------------------------------------------------------------------------------------------------
# ExtensionsIndex entry (slicer-extension-catalog-entry-schema v1.0.2, from Slicer's Schemas/)
# ---------------------------------------------------------------------------------------------------

CATALOG_REQUIRED = {"$schema", "category", "scm_url"}
CATALOG_PROPERTIES = {"$schema": str, "category": str, "scm_url": str, "scm_revision": str, "scm_type": str,
                      "build_dependencies": list, "dicom_support_rule": str, "build_subdirectory": str,
                      "enabled": bool, "tier": int}


def test_extensions_index_entry_follows_the_catalog_schema():
    entry = json.loads((REPO / "UnleashRegistration.json").read_text())
    assert CATALOG_REQUIRED <= set(entry), f"missing {CATALOG_REQUIRED - set(entry)}"
    assert set(entry) <= set(CATALOG_PROPERTIES), f"not allowed by the schema: {set(entry) - set(CATALOG_PROPERTIES)}"
    for key, value in entry.items():
        assert isinstance(value, CATALOG_PROPERTIES[key]), f"{key}: {type(value).__name__}"
    assert re.fullmatch(r"https://raw\.githubusercontent\.com/Slicer/Slicer/main/Schemas/"
                        r"slicer-extension-catalog-entry-schema-v1\.0\.[0-9]+\.json#", entry["$schema"])
    assert entry.get("scm_type", "git") in ("git", "local")
    assert all(isinstance(d, str) for d in entry.get("build_dependencies", []))
    assert 1 <= entry.get("tier", 1) <= 5
    # agrees with the extension's CMakeLists
    variables = {args[0]: args[1:] for c, args in cmake_commands(REPO / "CMakeLists.txt") if c == "set"}
    assert entry["category"] == variables["EXTENSION_CATEGORY"][0]
    assert entry["build_dependencies"] == variables["EXTENSION_DEPENDS"]
    assert entry["scm_url"].endswith(".git")


# ---------------------------------------------------------------------------------------------------
# The job command lines
# ---------------------------------------------------------------------------------------------------

def registration_module_call() -> ast.Call:
    tree = ast.parse((REPO / "UnleashRegistration" / "UnleashRegistration.py").read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "register_command"]
    assert len(calls) == 1
    return calls[0]


def command_keywords(function, job: str) -> set[str]:
    """The keywords a command builder takes: its own and its job's options (jobspec)."""
    return set(inspect.signature(function).parameters) - {"options"} | {o.dest for o in JOBS[job].options}


def test_the_module_calls_register_command_with_its_real_keywords():
    call = registration_module_call()
    parameters = command_keywords(register_command, "register")
    keywords = {k.arg for k in call.keywords}
    assert keywords <= set(parameters), f"unknown keywords {keywords - set(parameters)}"
    assert "python" in keywords and len(call.args) == 3
    assert pythonExecutable()


def test_registration_job_command_parses_with_the_cli(tmp_path, tiny_model):
    from unleash.cli import build_parser, cmd_register, resolve_engine_defaults

    python = str(tmp_path / "Slicer" / "bin" / "PythonSlicer")
    landmarks = writeLandmarksCsv(tmp_path / "landmarks.csv", [(1, 2, 3)], [(2, 3, 4)])
    command = register_command(tmp_path / "fixed.nrrd", tmp_path / "moving.nrrd", tmp_path / "output", model=str(tiny_model),
                               device="cuda:0", adapt_iters=20, landmarks=str(landmarks), start="network", python=python)
    assert command[:4] == [python, "-m", "unleash", "register"]
    args = build_parser().parse_args(command[3:])
    assert args.run is cmd_register
    assert (args.fixed, args.moving, args.output) == (str(tmp_path / "fixed.nrrd"), str(tmp_path / "moving.nrrd"),
                                                     str(tmp_path / "output"))
    assert (args.model, args.device, args.adapt_iters, args.landmarks, args.start) == \
        (str(tiny_model), "cuda:0", 20, str(landmarks), "network")
    assert args.progress == "json" and args.overwrite

    # as the module builds it with the defaults: no model, the engine's own iterations
    from unleash.pipeline import DEFAULT_ADAPT_ITERS

    command = register_command("f.nrrd", "m.nrrd", "out", model=None, device="auto", adapt_iters=None, landmarks=None,
                               python=python)
    args = resolve_engine_defaults(build_parser().parse_args(command[3:]))
    assert args.model is None and args.adapt_iters == DEFAULT_ADAPT_ITERS and args.landmarks is None and args.start is None


def test_the_training_module_calls_train_command_with_its_real_keywords():
    tree = ast.parse((REPO / "UnleashTraining" / "UnleashTraining.py").read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "train_command"]
    assert len(calls) == 2  # start and resume
    parameters = command_keywords(train_command, "train")
    for call in calls:
        assert {k.arg for k in call.keywords} <= parameters and "python" in {k.arg for k in call.keywords}
    fine_tune = train_command("registration", data=[("pairs", 1.0)], out="run", init="start.safetensors", iterations=50)
    from unleash.cli import build_parser
    args = build_parser().parse_args(fine_tune[fine_tune.index("train"):])
    assert args.init == "start.safetensors" and args.data == ["pairs"] and args.iterations == 50


def test_a_training_job_stops_on_cancel_and_resumes_as_the_module_runs_it(tmp_path):
    """Stop in the Training panel is JobRunner.cancel (SIGTERM to the job's process group): the job saves a
    checkpoint, reports `stopped` and exits 0; Resume runs `unleash train KIND --resume RUN`."""
    from conftest import VESSELS

    from unleash.cli import build_parser, cmd_train

    if not (VESSELS / "train" / "case_032_1.nii.gz").is_file():
        pytest.skip(f"real Lung250M-4B training pairs not found under {VESSELS}")
    data = tmp_path / "pairs"
    data.mkdir()
    for scan in ("1", "2"):
        (data / f"case_032_{scan}.nii.gz").symlink_to(VESSELS / "train" / f"case_032_{scan}.nii.gz")
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"model": {"shape_xyz": [81, 57, 81], "spacing_mm": 4.0, "lattice_mm": 4.0,
                                            "channels": [4, 8]}, "training": {"validate_every": 0}}))
    run = tmp_path / "runs" / "registration-1"
    run.parent.mkdir()
    command = train_command("registration", data=[(str(data), 2.0)], out=str(run), config=str(config), iterations=200,
                            device="cpu", python=sys.executable)
    args = build_parser().parse_args(command[3:])
    assert args.run is cmd_train and args.data == [f"{data}:2"] and args.progress == "json"

    events = []
    job = JobRunner(command, env=jobEnvironment(), onEvent=events.append, terminateGraceS=120).start()
    while job.poll() and not any(e["event"] == "progress" and e["step"] >= 2 for e in events):
        time.sleep(0.05)
    job.cancel()
    job.wait(timeout=180)
    assert job.returncode == 0 and job.result is None, job.stderrTail
    stopped = events[-1]
    assert stopped["event"] == "stopped" and stopped["reason"] == "SIGTERM" and 2 <= stopped["step"] < 200
    summary = run_summary(run)
    assert summary == {"name": "registration-1", "kind": "registration", "step": stopped["step"], "total": 200,
                       "finished": False}
    assert "can be resumed" in describeRun(summary)

    resume = train_command("registration", resume=str(run), iterations=stopped["step"] + 2, device="cpu",
                           python=sys.executable)
    job = JobRunner(resume, env=jobEnvironment()).start().wait(timeout=180)
    assert job.returncode == 0 and job.result["step"] == stopped["step"] + 2, job.error
    assert Path(job.result["model"]).is_file()
    assert read_metrics(run)["step"] == [float(s) for s in range(1, stopped["step"] + 3)]
    assert run_summary(run)["finished"] and find_model_files([run.parent]) == [run / "model.safetensors"]


def test_the_sampler_module_calls_sample_command_with_its_real_keywords_and_the_engines_schedules():
    source = (REPO / "UnleashSampler" / "UnleashSampler.py").read_text()
    tree = ast.parse(source)
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "sample_command"]
    assert len(calls) == 1
    assert {k.arg for k in calls[0].keywords} <= command_keywords(sample_command, "sample")
    imported = {a.name for n in tree.body if isinstance(n, ast.ImportFrom) and n.module == "unleash.jobspec" for a in n.names}
    assert {"SCHEDULES", "DEFAULT_SCHEDULE", "DEFAULT_TEMPERATURE"} <= imported


def test_probe_snippet_uses_only_the_allowed_engine_names():
    tree = ast.parse(PROBE_SNIPPET)
    imported = {(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert imported == {("unleash.devices", "list_devices"), ("unleash.pipeline", "DEFAULT_ADAPT_ITERS")}
    assert probeCommand("py")[:2] == ["py", "-c"]


# ---------------------------------------------------------------------------------------------------
# The job runner: events, errors, and Cancel stopping the whole process tree
# ---------------------------------------------------------------------------------------------------

def python_job(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def test_runner_hands_over_events_lines_and_the_result():
    events, lines, finished = [], [], []
    job = JobRunner(python_job("""
        import json, sys
        print("a plain line")
        print(json.dumps({"event": "log", "message": "reading"}))
        print(json.dumps({"event": "progress", "stage": "refinement", "step": 5, "total": 10, "fraction": 0.5, "eta_s": 12.0}))
        sys.stderr.write("a warning\\n")
        print(json.dumps({"event": "result", "seconds": {"total": 1.5}}))
    """), onEvent=events.append, onLine=lambda stream, line: lines.append((stream, line)), onFinished=finished.append)
    job.start().wait(timeout=30)
    assert [e["event"] for e in events] == ["log", "progress", "result"]
    assert ("stdout", "a plain line") in lines and ("stderr", "a warning") in lines
    assert finished == [job] and job.returncode == 0 and job.error is None
    assert job.result["seconds"]["total"] == 1.5 and job.lastProgress["step"] == 5
    assert describeProgress(job.lastProgress) == (50, "refinement 5/10, 12 s left")


def test_runner_reports_the_engines_error_line():
    job = JobRunner(python_job("""
        import json, sys
        print(json.dumps({"event": "error", "message": "fixed.nrrd: no such file"}))
        sys.stderr.write("unleash: error: fixed.nrrd: no such file\\n")
        sys.exit(2)
    """)).start().wait(timeout=30)
    assert job.returncode == 2 and job.error == "fixed.nrrd: no such file"
    crashed = JobRunner(python_job("import sys; sys.stderr.write('Segmentation fault\\n'); sys.exit(139)"))
    crashed.start().wait(timeout=30)
    assert "exit code 139" in crashed.error and "Segmentation fault" in crashed.error


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its parent) counts as gone
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "State:\tZ" in status.read_text())


@pytest.mark.skipif(os.name == "nt", reason="POSIX process groups (Windows uses taskkill /T)")
@pytest.mark.parametrize("grace", [0.0, 1.0])
def test_cancel_stops_the_whole_process_tree(tmp_path, grace):
    """PythonSlicer is a launcher; the real Python is its child. Cancel must stop both (a child that ignores
    SIGTERM too: it is killed after the grace period)."""
    pids = tmp_path / "pids"
    job = JobRunner(python_job(f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"])
        open({str(pids)!r}, "w").write(f"{{child.pid}}")
        print('{{"event": "log", "message": "started"}}', flush=True)
        time.sleep(60)
    """), terminateGraceS=grace).start()
    deadline = time.monotonic() + 20
    while not (pids.exists() and pids.read_text()) and time.monotonic() < deadline:
        job.poll()
        time.sleep(0.05)
    child = int(pids.read_text())
    assert pid_alive(child)
    started = time.monotonic()
    job.cancel()
    job.wait(timeout=20)
    assert job.cancelled and job.error == "cancelled"
    assert time.monotonic() - started < grace + 10
    deadline = time.monotonic() + 5
    while pid_alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(child), "the job's child survived Cancel"
    assert job.returncode in (-signal.SIGTERM, -signal.SIGKILL)


@pytest.mark.skipif(os.name == "nt", reason="POSIX process groups")
def test_a_leftover_child_holding_the_output_open_is_stopped():
    """The job exits but a process it started keeps its stdout open: the runner does not wait forever."""
    job = JobRunner(python_job("""
        import subprocess, sys
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print('{"event": "result", "ok": true}', flush=True)
    """))
    job.leftoverGraceS = 0.3
    started = time.monotonic()
    job.start().wait(timeout=20)
    assert job.returncode == 0 and job.result["ok"] and time.monotonic() - started < 10


def test_wait_with_a_timeout_cancels():
    job = JobRunner(python_job("import time; time.sleep(30)"), terminateGraceS=0).start()
    with pytest.raises(TimeoutError):
        job.wait(timeout=0.5)
    assert job.finished and job.cancelled


def test_job_environment_makes_the_engine_importable_from_anywhere(tmp_path):
    env = jobEnvironment({"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)})
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(REPO)
    assert env["PYTHONUNBUFFERED"] == "1"
    job = JobRunner(python_job("import unleash.jobs, json; print(json.dumps({'event': 'result', 'ok': True}))"),
                    env=env, cwd=str(tmp_path)).start().wait(timeout=30)
    assert job.returncode == 0 and job.result == {"event": "result", "ok": True}, job.stderrTail


def test_format_seconds():
    assert [formatSeconds(s) for s in (None, 0.4, 59, 61, 3725)] == ["estimating", "0 s", "59 s", "1 min 01 s", "1 h 02 min"]


# ---------------------------------------------------------------------------------------------------
# Landmarks: Slicer RAS -> voxel indices of the exported files -> the engine's CSV
# ---------------------------------------------------------------------------------------------------

def test_landmarks_land_on_the_engines_voxel_indices(tmp_path):
    """A Slicer volume read from an oblique LPS file: its IJKToRAS is the file's geometry with x and y
    negated. Points given in RAS must come out as the file's (i, j, k), which the engine maps to LPS."""
    from unleash.datasets import read_landmarks
    from unleash.geometry import Grid

    angle = np.deg2rad(20)
    direction = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    grid = Grid((40, 30, 20), (0.8, 0.9, 2.5), (-120.0, 80.0, -300.0), tuple(direction.flatten()))
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = lps_to_ras @ direction @ np.diag(grid.spacing_mm)  # what Slicer computes when reading
    ijk_to_ras[:3, 3] = lps_to_ras @ np.array(grid.origin_lps)
    ras_to_ijk = np.linalg.inv(ijk_to_ras)

    fixed_ijk = np.array([[3.0, 4.0, 5.0], [10.5, 20.25, 7.0], [39.0, 0.0, 19.0]])
    moving_ijk = fixed_ijk + [1.0, -2.0, 0.5]
    to_ras = lambda ijk: (lps_to_ras @ grid.index_to_physical(ijk).T).T  # noqa: E731
    got_fixed = np.array(rasToIjk(to_ras(fixed_ijk), ras_to_ijk.tolist()))
    got_moving = np.array(rasToIjk(to_ras(moving_ijk), ras_to_ijk.tolist()))
    assert np.allclose(got_fixed, fixed_ijk, atol=1e-6) and np.allclose(got_moving, moving_ijk, atol=1e-6)

    path = writeLandmarksCsv(tmp_path / "landmarks.csv", got_fixed.tolist(), got_moving.tolist())
    assert path.read_text().splitlines()[0] == HEADER
    read_fixed, read_moving = read_landmarks(path)
    assert np.allclose(read_fixed, fixed_ijk, atol=1e-3) and np.allclose(read_moving, moving_ijk, atol=1e-3)


def test_landmark_lists_must_be_pairs(tmp_path):
    with pytest.raises(ValueError, match="3 points and the moving ones 2"):
        writeLandmarksCsv(tmp_path / "l.csv", [(0, 0, 0)] * 3, [(0, 0, 0)] * 2)
    with pytest.raises(ValueError, match="empty"):
        writeLandmarksCsv(tmp_path / "l.csv", [], [])


# ---------------------------------------------------------------------------------------------------
# Dependencies, devices, models, runs, reports
# ---------------------------------------------------------------------------------------------------

def test_dependency_plan():
    assert missingPackages(lambda name: None) == ["torch", *PIP_REQUIREMENTS]
    assert missingPackages(lambda name: object()) == []
    plan = installPlan(["torch", "safetensors"], None)
    assert plan[0].startswith("PyTorch") and "PyTorch extension" in plan[0]
    assert any(line.startswith("safetensors>=") for line in plan)
    assert not any("numpy" in r or "SimpleITK" in r for r in PIP_REQUIREMENTS.values())
    assert set(PROTECTED) == {"numpy", "SimpleITK"}
    assert constraintsText({"numpy": "1.26.4", "SimpleITK": None}) == "numpy==1.26.4\n"
    assert numpyTorchClash("2.1.0", "2.2.2") and numpyTorchClash("2.0.0", "2.1.0+cu121")
    assert numpyTorchClash("1.26.4", "2.2.2") is None and numpyTorchClash("2.1.0", "2.3.0") is None
    assert "PyTorch >=2.3" in installPlan([], numpyTorchClash("2.1.0", "2.2.2"))[0]


def test_slicer_installs_every_engine_dependency():
    """What pip installs for the engine (pyproject.toml) is what a Slicer job finds: PyTorch through its
    extension, numpy and SimpleITK from Slicer, everything else from PIP_REQUIREMENTS."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib comes with Python 3.11")

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    def name(requirement):
        return re.split(r"[<>=!~ ;\[]", requirement, maxsplit=1)[0]

    assert {name(r) for r in declared} == {"torch", *PROTECTED.values(), *map(name, PIP_REQUIREMENTS.values())}


def test_device_choices():
    devices = [{"id": "cpu", "name": "CPU", "memory_gb": None, "free_gb": None},
               {"id": "cuda:0", "name": "NVIDIA H200", "memory_gb": 139.8, "free_gb": 120.5},
               {"id": "cuda:1", "name": "NVIDIA T4", "memory_gb": 15.0, "free_gb": 1.2}]
    choices = deviceChoices(devices)
    assert [c[1] for c in choices] == ["auto", "cpu", "cuda:0", "cuda:1"]
    assert deviceLabel(devices[1]) == "GPU 0: NVIDIA H200, 139.8 GB (120.5 GB free)"
    assert [c[1] for c in deviceChoices(None)] == ["auto", "cpu"]
    assert lowMemoryWarning("cuda:1", devices) and "CPU" in lowMemoryWarning("cuda:1", devices)
    assert lowMemoryWarning("cuda:0", devices) is None and lowMemoryWarning("auto", devices) is None
    assert lowMemoryWarning("cpu", devices) is None


def test_models_and_runs_are_found(tmp_path):
    (tmp_path / "run-1").mkdir()
    (tmp_path / "run-1" / "model.safetensors").write_bytes(b"")
    (tmp_path / "run-2" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run-2" / "checkpoints" / "last.safetensors").write_bytes(b"")
    (tmp_path / "deep" / "a" / "b").mkdir(parents=True)
    (tmp_path / "deep" / "a" / "b" / "too-deep.safetensors").write_bytes(b"")
    found = {p.relative_to(tmp_path).as_posix() for p in find_model_files([tmp_path, tmp_path / "missing"])}
    assert found == {"run-1/model.safetensors"}  # a checkpoint is a training state, not a model file
    runs = {run.name: has_model for run, has_model in list_runs(tmp_path)}
    assert runs == {"run-1": True, "run-2": False, "deep": False}
    assert list_runs(tmp_path / "missing") == [] and list_runs(None) == []


def test_sampled_pairs_are_copied_into_a_training_folder(tmp_path):
    samples = tmp_path / "samples"
    samples.mkdir()
    for name in ("pair_0001_fixed.nii.gz", "pair_0001_moving.nii.gz", "samples.json", "preview.png"):
        (samples / name).write_bytes(name.encode())
    copied = copyTrainingPairs(samples, tmp_path / "train")
    assert sorted(p.name for p in copied) == ["pair_0001_fixed.nii.gz", "pair_0001_moving.nii.gz"]
    assert (tmp_path / "train" / "pair_0001_moving.nii.gz").read_bytes() == b"pair_0001_moving.nii.gz"
    with pytest.raises(ValueError, match="already has pair_0001_fixed"):
        copyTrainingPairs(samples, tmp_path / "train")
    with pytest.raises(ValueError, match="holds no sampled pairs"):
        copyTrainingPairs(tmp_path / "train" / "missing", tmp_path / "other")


def test_model_files_are_told_apart_by_kind_without_torch(tmp_path, tiny_model):
    from unleash.checkpoints import DEFAULTS

    (tmp_path / "run-a").mkdir()
    shutil.copy(tiny_model, tmp_path / "run-a" / "model.safetensors")
    (tmp_path / "run-b").mkdir()
    shutil.copy(DEFAULTS["sampler"], tmp_path / "run-b" / "model.safetensors")
    (tmp_path / "run-c").mkdir()
    (tmp_path / "run-c" / "model.safetensors").write_bytes(b"\xff" * 16)  # not a model file
    assert model_kind(tmp_path / "run-a" / "model.safetensors") == "registration"
    assert model_kind(tmp_path / "run-b" / "model.safetensors") == "sampler"
    assert model_kind(tmp_path / "run-c" / "model.safetensors") is None
    assert find_model_files([tmp_path], kind="registration") == [tmp_path / "run-a" / "model.safetensors"]
    assert find_model_files([tmp_path], kind="sampler") == [tmp_path / "run-b" / "model.safetensors"]


def test_result_box_shows_runtime_folding_inverse_consistency_and_tre():
    report = {"device": "cuda:0 (NVIDIA H200)", "seconds": {"total": 12.34}, "folding_fraction": 0.000012,
              "folding_fraction_lungs": 0.0, "jacobian_min": 0.41, "jacobian_max": 2.2,
              "inverse_consistency_error_mm": {"mean": 0.0312, "p99": 0.2, "max": 0.5},
              "model": {"id": "registration_default"}, "refinement": {"method": "io", "iterations": 220}}
    rows = dict(reportSummary(report))
    assert rows["Runtime"] == "12.3 s on cuda:0 (NVIDIA H200)"
    assert rows["Folding (J \u2264 0)"].startswith("0.0012 % of voxels")
    assert rows["Inverse consistency"].startswith("0.031 mm mean")
    assert "TRE" not in rows
    assert rows["Refinement"] == "io, 220 iterations"
    report["refinement"]["start"] = "identity"
    assert dict(reportSummary(report))["Refinement"] == "io, 220 iterations, from the identity"
    report["tre_before_mm"] = {"mean": 8.2, "p50": 7.0, "count": 100}
    report["tre_after_mm"] = {"mean": 1.23, "p50": 1.1, "count": 100}
    assert dict(reportSummary(report))["TRE"] == "8.20 mm \u2192 1.23 mm mean, 1.10 mm median (100 landmarks)"
    assert "<table>" in reportHtml(report) and reportHtml({}) == ""
