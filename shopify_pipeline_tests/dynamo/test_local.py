"""`shopify-pipeline local-dynamodb` and `create-tables` as an operator runs them."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from shopify_pipeline.dynamo.local import LocalDynamoDBError, free_port, java_version

CLI = [sys.executable, "-m", "shopify_pipeline.cli"]


def test_local_dynamodb_starts_prints_the_endpoint_and_stops_on_ctrl_c(tmp_path):
    port = free_port()
    # Started with SIGINT ignored, as `shopify-pipeline local-dynamodb &` in a script (or nohup) starts it:
    # Ctrl-C must stop it all the same.
    process = subprocess.Popen([*CLI, "local-dynamodb", "--port", str(port)], stdout=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        first = process.stdout.readline()
        assert f"http://127.0.0.1:{port}" in first
        env = {**os.environ, "AWS_ENDPOINT_URL_DYNAMODB": f"http://127.0.0.1:{port}",
               "SHOPIFY_PIPELINE_TABLE_PREFIX": "cli_"}
        created = subprocess.run([*CLI, "create-tables", "--json"], env=env, capture_output=True, text=True,
                                 check=True)
        assert set(json.loads(created.stdout).values()) == {"created"}
        again = subprocess.run([*CLI, "create-tables", "--json"], env=env, capture_output=True, text=True,
                               check=True)
        assert set(json.loads(again.stdout).values()) == {"exists"}
    finally:
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=30)  # it stops Java (SIGTERM, SIGKILL after 10 s) and says so
    assert process.returncode == 0 and "stopped" in out
    time.sleep(0.5)
    with pytest.raises(subprocess.CalledProcessError):  # the server really is gone
        subprocess.run([*CLI, "create-tables"], env=env, capture_output=True, check=True, timeout=120)


def test_create_tables_against_a_dead_endpoint_says_what_to_do():
    env = {**os.environ, "AWS_ENDPOINT_URL_DYNAMODB": f"http://127.0.0.1:{free_port()}"}
    done = subprocess.run([*CLI, "create-tables"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "shopify-pipeline local-dynamodb" in done.stderr and "Traceback" not in done.stderr


def test_missing_java_names_the_package_to_install():
    with pytest.raises(LocalDynamoDBError, match="openjdk-17-jre-headless"):
        java_version("java-that-is-not-installed")


def test_old_java_is_refused(tmp_path):
    fake = tmp_path / "java"
    fake.write_text('#!/bin/sh\necho \'openjdk version "11.0.2" 2019-01-15\' >&2\n')
    fake.chmod(0o755)
    with pytest.raises(LocalDynamoDBError, match="found Java 11"):
        java_version(str(fake))
