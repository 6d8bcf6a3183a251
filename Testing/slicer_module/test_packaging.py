"""Packaging: every module file is in the CMake lists, the engine ships along, metadata agree."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
from moduleFiles import ENGINE_FOLDER, MODULE_FOLDER, REPOSITORY

MODULE_CMAKE = MODULE_FOLDER / "CMakeLists.txt"
TOP_CMAKE = REPOSITORY / "CMakeLists.txt"


def cmakeList(text: str, variable: str) -> list[str]:
    """The items of ``set(variable ...)`` with ${MODULE_NAME} expanded."""
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert match, f"{variable} is not set"
    moduleName = re.search(r"set\(MODULE_NAME\s+(\w+)\)", text).group(1)
    return [item.replace("${MODULE_NAME}", moduleName) for item in match.group(1).split()]


# The web viewer sits beside the module (it reuses its helpers) but is the pip package's, not
# the extension's: Slicer has its own views.
NOT_IN_EXTENSION = ("TorchEsegetaWeb",)


def moduleFiles(suffixes=None) -> set[str]:
    files = {
        path.relative_to(MODULE_FOLDER).as_posix()
        for path in MODULE_FOLDER.rglob("*")
        if path.is_file()
        and "__pycache__" not in path.parts
        and path.name != "CMakeLists.txt"
        and path.relative_to(MODULE_FOLDER).parts[0] not in NOT_IN_EXTENSION
    }
    return {f for f in files if suffixes is None or f.endswith(suffixes)}


def test_every_script_and_resource_of_the_module_is_listed():
    text = MODULE_CMAKE.read_text(encoding="utf-8")
    scripts = cmakeList(text, "MODULE_PYTHON_SCRIPTS")
    resources = cmakeList(text, "MODULE_PYTHON_RESOURCES")
    assert len(scripts) == len(set(scripts))
    assert set(scripts) == moduleFiles(".py")
    assert set(resources) == moduleFiles() - moduleFiles(".py")
    assert "Resources/UI/TorchEsegeta.ui" in resources
    assert "Resources/Icons/TorchEsegeta.png" in resources
    assert not [f for f in scripts + resources if f.startswith(NOT_IN_EXTENSION)]


def test_module_cmake_follows_slicer_conventions():
    text = MODULE_CMAKE.read_text(encoding="utf-8")
    build = re.search(r"slicerMacroBuildScriptedModule\((.*?)\)", text, re.S).group(1)
    assert "WITH_GENERIC_TESTS" in build and "NAME ${MODULE_NAME}" in build
    assert re.search(
        r"if\(BUILD_TESTING\).*slicer_add_python_unittest\(SCRIPT \$\{MODULE_NAME\}\.py\)",
        text,
        re.S,
    )


def test_the_engine_globs_cover_every_engine_file():
    text = MODULE_CMAKE.read_text(encoding="utf-8")
    patterns = re.findall(r"\$\{ENGINE_SOURCE_DIR\}/\*(\.\w+)", text)
    assert ".py" in patterns
    engineFiles = [
        path
        for path in ENGINE_FOLDER.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    ]
    uncovered = sorted(
        str(p.relative_to(ENGINE_FOLDER)) for p in engineFiles if p.suffix not in patterns
    )
    assert uncovered == [], "add their suffix to the engine glob in TorchEsegeta/CMakeLists.txt"


def test_top_level_cmake_describes_the_extension():
    text = TOP_CMAKE.read_text(encoding="utf-8")
    assert re.search(r"cmake_minimum_required\(VERSION [\d.]+\.\.\.[\d.]+", text)
    # Slicer packages no extension with an empty homepage; icon and screenshot may be empty
    # (their values: test_metadata.py).
    for variable in ("EXTENSION_HOMEPAGE", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION"):
        assert re.search(rf'set\({variable} "[^"]+"\)', text), variable
    for variable in ("EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        assert re.search(rf'set\({variable} "[^"]*"\)', text), variable
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in text
    order = [
        "find_package(Slicer REQUIRED)",
        "include(${Slicer_USE_FILE})",
        "add_subdirectory(TorchEsegeta)",
        "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
        "include(${Slicer_EXTENSION_CPACK})",
    ]
    positions = [text.index(line) for line in order]
    assert positions == sorted(positions)


def test_extension_description_and_catalog_entry_agree():
    s4ext = dict(
        line.partition(" ")[::2]
        for line in (REPOSITORY / "TorchEsegeta.s4ext").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    )
    catalog = json.loads((REPOSITORY / "TorchEsegeta.json").read_text(encoding="utf-8"))
    top = TOP_CMAKE.read_text(encoding="utf-8")
    assert catalog["$schema"].startswith("https://raw.githubusercontent.com/Slicer/Slicer/")
    assert catalog["build_dependencies"] == ["PyTorch"] and s4ext["depends"] == "PyTorch"
    assert catalog["scm_url"] == s4ext["scmurl"]
    assert catalog["category"] == s4ext["category"]
    assert f'set(EXTENSION_CATEGORY "{catalog["category"]}")' in top
    icon = s4ext["iconurl"]  # empty while the repository has no address (test_metadata.py)
    assert icon == "" or icon.endswith("TorchEsegeta/Resources/Icons/TorchEsegeta.png")


def test_icon_is_a_small_128_pixel_png():
    from PIL import Image

    path = MODULE_FOLDER / "Resources" / "Icons" / "TorchEsegeta.png"
    with Image.open(path) as icon:
        assert icon.format == "PNG" and icon.size == (128, 128)
    assert path.stat().st_size < 20_000


FAKE_SLICER = """
set(Slicer_USE_FILE ${CMAKE_CURRENT_LIST_DIR}/empty.cmake)
set(Slicer_EXTENSION_GENERATE_CONFIG ${CMAKE_CURRENT_LIST_DIR}/empty.cmake)
set(Slicer_EXTENSION_CPACK ${CMAKE_CURRENT_LIST_DIR}/empty.cmake)
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer/qt-scripted-modules)
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer/qt-scripted-modules)
set(BUILD_TESTING ON)
macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY "WITH_GENERIC_TESTS;WITH_SUBDIR" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  foreach(file IN LISTS MY_SCRIPTS MY_RESOURCES)
    if(NOT EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${file})
      message(FATAL_ERROR "listed but missing: ${file}")
    endif()
  endforeach()
  file(APPEND ${CMAKE_BINARY_DIR}/module.txt "${MY_NAME};${MY_WITH_GENERIC_TESTS}\\n")
endmacro()
macro(slicer_add_python_unittest)
  cmake_parse_arguments(MY "" "SCRIPT" "" ${ARGN})
  file(APPEND ${CMAKE_BINARY_DIR}/module.txt "test:${MY_SCRIPT}\\n")
endmacro()
"""


@pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake")
def test_cmake_configures_against_a_stand_in_slicer(tmp_path):
    fake = tmp_path / "fake-slicer"
    fake.mkdir()
    (fake / "SlicerConfig.cmake").write_text(FAKE_SLICER)
    (fake / "empty.cmake").write_text("")
    build = tmp_path / "build"
    completed = subprocess.run(
        ["cmake", "-S", str(REPOSITORY), "-B", str(build), f"-DSlicer_DIR={fake}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = completed.stdout + completed.stderr
    if completed.returncode != 0 and "COMPILER" in output and "could be found" in output:
        pytest.skip("project() needs a C/C++ compiler, which this machine lacks")
    assert completed.returncode == 0, output[-4000:]
    assert (build / "module.txt").read_text().splitlines() == [
        "TorchEsegeta;TRUE",
        "test:TorchEsegeta.py",
    ]
    copied = build / "lib/Slicer/qt-scripted-modules/TorchEsegetaLib"
    for path in ENGINE_FOLDER.rglob("*.py"):
        if "__pycache__" not in path.parts:
            assert (copied / path.relative_to(ENGINE_FOLDER)).is_file(), path
    assert (copied / "models" / "demo" / "weights" / "demo_unet.pt").is_file()
