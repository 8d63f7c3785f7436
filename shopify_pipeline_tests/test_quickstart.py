"""The README's quick start as a newcomer runs it: the demo, end to end, from a fresh folder."""

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_readme_quick_start_is_make_demo_and_make_test():
    block = README.read_text().split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["make demo", "make test"]
    makefile = (README.parent / "Makefile").read_text()
    assert re.search(r"^demo: setup\n\t\$\(BIN\)/shopify-pipeline demo$", makefile, re.M)
    assert re.search(r"^test: setup\n(\t.*\n)*\t\$\(BIN\)/pytest", makefile, re.M)
    assert "make test" in (README.parent / ".ci" / "run").read_text()


def test_the_demo_syncs_three_users_through_dagster_and_prints_a_summary(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_ENDPOINT_URL_DYNAMODB", "DAGSTER_HOME")}
    done = subprocess.run([sys.executable, "-m", "shopify_pipeline.cli", "demo", "--orders", "300"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = done.stdout.split("Summary", 1)[1]
    assert re.search(r"^alice: OK", summary, re.M) and re.search(r"^bob: OK", summary, re.M)
    assert re.search(r"^carol: FAILED", summary, re.M)
    assert "rejected the access token" in summary and "shopify-pipeline status --user carol" in summary
    alice = summary.split("alice:", 1)[1].split("bob:", 1)[0]
    assert re.search(r"orders\s+300 records written", alice)
    assert "status: completed" in alice and "status: failed" not in alice
    assert (tmp_path / ".dagster_home" / "dagster.yaml").exists(), "the demo's Dagster instance is kept for `make ui`"
    assert "shpat_revoked_long_ago" not in done.stdout + done.stderr, "the token never shows"
