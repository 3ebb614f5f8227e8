"""llmforge.llamacpp opens quantized GGUFs without dying on CPUs whose AMX kernels fault."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def q8_gguf(tmp_path_factory, wide_llama_dir):
    from llmforge.config.export import ExportConfig
    from llmforge.config.model import ModelConfig
    from llmforge.export import export_gguf
    from llmforge.workspace import Workspace

    workspace = Workspace(tmp_path_factory.mktemp("q8"))
    export_gguf(ModelConfig(), ExportConfig(quant=["q8_0"], verify=False), workspace, source=wide_llama_dir)
    (found,) = workspace.export_root.rglob("*-q8_0.gguf")
    return found


def test_open_llama_evaluates_a_quantized_model_in_a_child_process(q8_gguf):
    # In a child: where the AMX fault exists, a plain Llama() here would kill the test process itself.
    code = (
        "import sys\nfrom llmforge.llamacpp import open_llama\n"
        "llm = open_llama(sys.argv[1], n_ctx=64, verbose=False)\n"
        "out = llm.create_completion('the keeper', max_tokens=4, temperature=0)\n"
        "print(out['usage']['completion_tokens'])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(q8_gguf)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.strip().splitlines()[-1]) >= 1


def test_probe_result_is_cached_and_boolean(q8_gguf):
    from llmforge import llamacpp

    first = llamacpp.extra_buffers_work(str(q8_gguf))
    assert isinstance(first, bool)
    assert llamacpp.extra_buffers_work(str(q8_gguf)) is first
    assert llamacpp.extra_buffers_work.cache_info().hits >= 1
