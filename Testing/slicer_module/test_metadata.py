"""What the project says about itself: its addresses come from one place (pyproject.toml's
[project.urls]) and describe this project, the paper is cited with its authors, the licence
pyproject names is there, and the extension states the Slicer release it needs."""

from __future__ import annotations

import json
import re

import pytest
from moduleFiles import MODULE_FOLDER, REPOSITORY
from project import pyproject
from TorchEsegetaSlicer.compatibility import MINIMUM_SLICER

URLS = pyproject()["project"].get("urls", {})
ADDRESS = re.compile(r"https?://[^\s\"'<>)]+")
PAPER_AUTHORS = (
    "S. Chatterjee, A. Das, C. Mandal, B. Mukhopadhyay, M. Vipinraj, A. Shukla, "
    "R. Nagaraja Rao, C. Sarasaen, O. Speck, A. Nürnberger"
)


def s4ext() -> dict[str, str]:
    text = (REPOSITORY / "TorchEsegeta.s4ext").read_text(encoding="utf-8")
    pairs = (line.partition(" ") for line in text.splitlines() if line.strip())
    return {key: value.strip() for key, _, value in pairs if not key.startswith("#")}


def cmakeVariable(name: str) -> str:
    text = (REPOSITORY / "CMakeLists.txt").read_text(encoding="utf-8")
    match = re.search(rf'^set\({name} (?:"([^"]*)"|([^)"\s]+))\)', text, re.M)
    assert match, f"{name} is not set in CMakeLists.txt"
    return match.group(1) if match.group(1) is not None else match.group(2)


def catalogEntry() -> dict:
    return json.loads((REPOSITORY / "TorchEsegeta.json").read_text(encoding="utf-8"))


def jobSchema() -> dict:
    path = REPOSITORY / "TorchEsegetaLib" / "schema" / "job.schema.json"
    return json.loads(path.read_text(encoding="utf-8"))


def addressesOfTheProject() -> dict[str, list[str]]:
    """Every address that says where the project, its pages or its files are, by file."""
    catalog = {key: value for key, value in catalogEntry().items() if key != "$schema"}
    return {
        "CMakeLists.txt": ADDRESS.findall((REPOSITORY / "CMakeLists.txt").read_text("utf-8")),
        "TorchEsegeta.s4ext": ADDRESS.findall(" ".join(s4ext().values())),
        "TorchEsegeta.json": ADDRESS.findall(json.dumps(catalog)),
        "TorchEsegeta.py": ADDRESS.findall((MODULE_FOLDER / "TorchEsegeta.py").read_text("utf-8")),
        "job.schema.json $id": ADDRESS.findall(jobSchema().get("$id", "")),
    }


def test_every_address_the_project_gives_is_one_of_pyprojects_urls():
    assert URLS, "pyproject.toml has no [project.urls]"
    foreign = {
        where: [url for url in urls if not url.startswith(tuple(URLS.values()))]
        for where, urls in addressesOfTheProject().items()
    }
    assert foreign == {where: [] for where in foreign}


def test_the_extension_files_agree_with_pyproject():
    description = s4ext()
    homepage = URLS.get("Homepage") or URLS["Paper"]  # Slicer packages no extension without one
    repository = URLS.get("Repository", "")
    assert cmakeVariable("EXTENSION_HOMEPAGE") == description["homepage"] == homepage
    assert description["scmurl"] == catalogEntry()["scm_url"] == repository
    assert cmakeVariable("EXTENSION_ICONURL") == description["iconurl"]
    assert cmakeVariable("EXTENSION_SCREENSHOTURLS") == description["screenshoturls"]
    assert cmakeVariable("EXTENSION_DESCRIPTION") == description["description"]
    if not repository:  # nothing of the repository has an address to point at
        assert description["iconurl"] == description["screenshoturls"] == ""
        assert "$id" not in jobSchema()


def test_the_extension_states_the_slicer_release_it_needs():
    assert f"Needs 3D Slicer {MINIMUM_SLICER} or newer" in s4ext()["description"]


def test_the_paper_is_cited_with_its_authors():
    module = (MODULE_FOLDER / "TorchEsegeta.py").read_text(encoding="utf-8")
    assert f"Based on: {PAPER_AUTHORS}, <i>TorchEsegeta" in re.sub(r'"\s+"', "", module)
    assert URLS["Paper"] in module


@pytest.mark.parametrize("wrong", ["A. Chatterjee", "soumickmj"])
def test_no_file_repeats_the_old_citation_or_the_papers_repository(wrong):
    suffixes = {".py", ".md", ".json", ".txt", ".s4ext", ".toml", ".ui", ".html"}
    ours = ["TorchEsegetaLib", "TorchEsegeta", "Testing", "docs", "benchmarks"]
    files = [p for p in REPOSITORY.iterdir() if p.is_file()]
    files += [p for folder in ours for p in (REPOSITORY / folder).rglob("*") if p.is_file()]
    found = [
        str(path.relative_to(REPOSITORY))
        for path in files
        if path.suffix in suffixes
        and path.name != "test_metadata.py"
        and wrong in path.read_text(encoding="utf-8", errors="replace")
    ]
    assert found == []


def test_the_licence_pyproject_names_is_there():
    project = pyproject()["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    text = (REPOSITORY / "LICENSE").read_text(encoding="utf-8")
    assert text.lstrip().startswith("Apache License\n") and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text.split()) > 1500
    assert cmakeVariable("EXTENSION_LICENSE_FILE") == "${CMAKE_CURRENT_SOURCE_DIR}/LICENSE"


def test_slicers_first_use_installs_pyprojects_floors():
    from TorchEsegetaSlicer.dependencies import PIP_REQUIREMENTS

    declared = set(pyproject()["project"]["dependencies"])
    assert set(PIP_REQUIREMENTS.values()) <= declared
