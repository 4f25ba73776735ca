"""schemathesis against a real uvicorn: requests generated from /openapi.json for every v1
and v2 route, every check on, the scoring key on the scoring routes and the admin key on the
repository routes. No 5xx, valid requests accepted, invalid ones refused, and every answer
as documented."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, TEST_API_KEY, LiveServer, start_server, stop_server

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
# The keys per security scheme, the per-model exception and the 413 as a refusal: see there.
CONFIG = Path(__file__).parent / "schemathesis.toml"
ADMIN_KEY = "fuzz-admin-key-0123456"
# A floor under the generated requests, well below the ~2,900 to 3,300 a run makes: a run that
# collapsed (a document that did not load, operations skipped) fails instead of passing empty.
MIN_REQUESTS = 2000
# The v2 and batch row limit, small enough that the document states len(data) = n x F for
# every row count (server/openapi_schemas.py, EXACT_ROWS) and that no valid body reaches the
# byte limits, whose 413 no schema can state.
MAX_ROWS = "4"

MOBILE_MONEY = ROOT / "models" / "mobile-money" / "4"


@pytest.fixture(scope="module", params=["one model", "two models"])
def server(
    request: pytest.FixtureRequest, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, LiveServer]]:
    """(how many models, the server)."""
    folder = tmp_path_factory.mktemp("fuzz")
    env = {"FRAUD_ADMIN_KEYS": ADMIN_KEY, "FRAUD_MAX_BATCH_ITEMS": MAX_ROWS}
    if request.param == "one model":
        # A copy: the fuzzed policy routes write policy.json beside the versions.
        shutil.copytree(tiny_model_dir, folder / "repo" / "tiny" / "1")
        live = start_server(folder / "repo" / "tiny" / "1", folder / "uvicorn.log", env)
    else:
        # The tiny model as the default beside a shipped one of another width: the named
        # routes and every schema shared by both models are fuzzed too.
        repository = folder / "repo"
        shutil.copytree(tiny_model_dir, repository / "tiny" / "1")
        shutil.copytree(MOBILE_MONEY, repository / "mobile-money" / "4")
        env |= {"FRAUD_MODEL_NAME": "", "FRAUD_DEFAULT_MODEL": "tiny"}
        live = start_server(repository / "tiny" / "1", folder / "uvicorn.log", env)
    yield request.param, live
    stop_server(live)


def test_generated_requests_get_no_5xx_and_documented_answers(
    server: tuple[str, LiveServer],
) -> None:
    models, live = server
    result = subprocess.run(
        [
            str(SCHEMATHESIS),
            "--config-file",
            str(CONFIG),
            "run",
            f"{live.base_url}/openapi.json",
            "--checks",
            "all",
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
        env=os.environ | {"FUZZ_API_KEY": TEST_API_KEY, "FUZZ_ADMIN_KEY": ADMIN_KEY},
    )
    output = result.stdout + result.stderr
    generated = re.search(r"(\d+) generated", output)
    assert result.returncode == 0, output[-4000:]
    assert generated is not None and int(generated[1]) >= MIN_REQUESTS, output[-2000:]
    if models == "one model":
        # With one model every body schema is exact: schemathesis sees its valid requests
        # accepted, not mostly refused.
        assert "Schema validation mismatch" not in output, output[-4000:]
    log = live.log.read_text()
    assert "Traceback" not in log and " 500 " not in log
