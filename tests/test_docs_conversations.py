"""docs/conversations.md cannot drift from the code: its tiny-model loop (self-chat generation, stats, training on
conversations, local and served two-turn chat) runs here, and the served answer equals inference.py's."""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
DOC = (REPO / "docs" / "conversations.md").read_text(encoding="utf-8")


def loop_block() -> str:
    found = re.search(r"<!-- conversations-test -->\n```bash\n(.*?)```", DOC, flags=re.S)
    assert found, "docs/conversations.md must hold the tested loop after <!-- conversations-test -->"
    return found.group(1)


@pytest.mark.slow
def test_the_documented_conversation_loop_runs(tmp_path):
    out = tmp_path / "loop"
    env = dict(os.environ, CONV_OUT=str(out), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", WANDB_DISABLED="true", PYTHONPATH=str(REPO))
    env["PATH"] = f"{pathlib.Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # `python` is this venv's
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", loop_block()], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    regen = json.loads((out / "gen" / "regen.json").read_text())
    assert len(regen) >= 32 and all([m["role"] for m in e["messages"]] == ["user", "assistant"] * 2 for e in regen)
    assert json.loads((out / "stats" / "stats.json").read_text())["data_sets"]["regen"]["turns"][
        "records_by_turns"] == {"2": len(regen)}
    served = json.loads((out / "served.json").read_text())
    assert served == json.loads((out / "local.json").read_text()) and served[0]["output"]
    assert [m["role"] for m in served[0]["messages"]] == ["user", "assistant", "user"]
