"""The README and docs/findings.md quote the committed findings of each study (docs/findings/<study>-<profile>.json,
written by `flower-pipeline study report --findings`): a verdict changed in one and not in the other fails here."""

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
