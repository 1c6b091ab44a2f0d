"""The fidelity register names real tests and covers every registered method."""

import re
from pathlib import Path

from lps.methods import METHODS

ROOT = Path(__file__).resolve().parents[1]


def test_fidelity_register_names_existing_tests_and_every_method():
    text = (ROOT / "FIDELITY.md").read_text()
    refs = set(re.findall(r"(test_[a-z_]+\.py)::(test_[A-Za-z0-9_]+)", text))
    assert len(refs) > 50
    missing = []
    for file, name in sorted(refs):
        src = (ROOT / "tests" / file)
        if not src.is_file() or not re.search(rf"^def {name}\(", src.read_text(), re.M):
            missing.append(f"{file}::{name}")
    assert not missing, f"FIDELITY.md names tests that do not exist: {missing}"
    headings = re.findall(r"^## (.+)$", text, re.M)
    labels = {"fixmatch": "FixMatch", "ds3l": "DS3L", "dtc": "DTC", "rankstats": "RankStats",
              "simclr_kmeans": "SimCLR", "orca": "ORCA", "gcd": "GCD", "openncd": "OpenNCD", "nach": "NACH",
              "lps": "LPS", "ssc": "SSC", "sscl": "SsCL"}
    assert set(METHODS.names()) <= set(labels), "a new method needs a FIDELITY.md section"
    for name in METHODS.names():
        assert any(h.startswith(labels[name]) for h in headings), f"FIDELITY.md has no section for {name}"
