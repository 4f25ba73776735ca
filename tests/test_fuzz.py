"""schemathesis against a real uvicorn: requests generated from /openapi.json for every v1
and v2 route, with a valid key. No 5xx, and every answer matches the document."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, TEST_API_KEY, LiveServer, start_server, stop_server

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
MIN_REQUESTS = 1000
# Left out: positive_data_acceptance and negative_data_rejection judge requests by the schema
# alone, which cannot state the cross-field rules the server applies (len(data) equals the
# product of shape; a body over the size limit is 413 whatever its shape). What is kept checks
# the answers: no 5xx, statuses, content types, headers and bodies as documented.
EXCLUDED_CHECKS = "positive_data_acceptance,negative_data_rejection"


MOBILE_MONEY = ROOT / "models" / "mobile-money" / "3"


@pytest.fixture(scope="module", params=["one model", "two models"])
def server(
    request: pytest.FixtureRequest, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("fuzz")
    if request.param == "one model":
        live = start_server(tiny_model_dir, folder / "uvicorn.log")
    else:
        # The tiny model as the default beside a shipped one of another width: the named
        # routes and every schema shared by both models are fuzzed too.
        repository = folder / "repo"
        shutil.copytree(tiny_model_dir, repository / "tiny" / "1")
        shutil.copytree(MOBILE_MONEY, repository / "mobile-money" / "3")
        env = {"FRAUD_MODEL_NAME": "", "FRAUD_DEFAULT_MODEL": "tiny"}
        live = start_server(repository / "tiny" / "1", folder / "uvicorn.log", env)
    yield live
    stop_server(live)


def test_generated_requests_get_no_5xx_and_documented_answers(server: LiveServer) -> None:
    result = subprocess.run(
        [
            str(SCHEMATHESIS),
            "run",
            f"{server.base_url}/openapi.json",
            "--header",
            f"X-API-Key: {TEST_API_KEY}",
            "--checks",
            "all",
            "--exclude-checks",
            EXCLUDED_CHECKS,
            "--max-examples",
            "40",
            "--seed",
            "1",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = result.stdout + result.stderr
    generated = re.search(r"(\d+) generated", output)
    assert result.returncode == 0, output[-4000:]
    assert generated is not None and int(generated[1]) >= MIN_REQUESTS, output[-2000:]
    log = server.log.read_text()
    assert "Traceback" not in log and " 500 " not in log
