"""The README and docs/findings.md quote the committed findings of each study (docs/findings/<study>-<profile>.json,
written by `flower-pipeline study report --findings`): a verdict changed in one and not in the other fails here."""

import importlib.util
import json
import re

from conftest import PROJECT

from flower_pipeline.study_report import findings_summary

FINDINGS = sorted((PROJECT / "docs" / "findings").glob("*.json"))


QUOTING = (PROJECT / "README.md", PROJECT / "docs" / "findings.md")


def test_the_readme_quotes_each_committed_findings_file_as_it_is():
    readme = "\n".join(path.read_text() for path in QUOTING)
    assert FINDINGS, "no committed findings"
    for file in FINDINGS:
        quoted = re.search(rf"<!-- findings: {file.stem} -->\n(.*?)\n<!-- /findings -->", readme, re.S)
        assert quoted, f"the README quotes no {file.name} (<!-- findings: {file.stem} --> … <!-- /findings -->)"
        expected = findings_summary(json.loads(file.read_text()))
        assert quoted.group(1) == expected, f"the README's quote of {file.name} differs; it should read:\n{expected}"


def test_every_quote_in_the_readme_has_its_committed_findings():
    quoted = re.findall(r"<!-- findings: ([\w-]+) -->", "\n".join(path.read_text() for path in QUOTING))
    assert sorted(quoted) == [file.stem for file in FINDINGS]


def test_the_findings_quote_each_committed_snapshot_finding_as_it_is():
    """docs/findings.md quotes docs/findings/snapshots/<variant>-<arch>.json as benchmarks/snapshots.py sums it up."""
    spec = importlib.util.spec_from_file_location("snapshot_evidence", PROJECT / "benchmarks" / "snapshots.py")
    evidence = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(evidence)
    text = (PROJECT / "docs" / "findings.md").read_text()
    files = sorted((PROJECT / "docs" / "findings" / "snapshots").glob("*.json"))
    assert files and sorted(re.findall(r"<!-- snapshots: ([\w-]+) -->", text)) == [f.stem for f in files]
    for file in files:
        quoted = re.search(rf"<!-- snapshots: {file.stem} -->\n(.*?)\n<!-- /snapshots -->", text, re.S)
        assert quoted.group(1) == evidence.summary(json.loads(file.read_text())), f"{file.name} is quoted otherwise"
