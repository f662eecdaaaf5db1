"""Glue: run the authors' unmodified Stage 1 / Stage 2 scripts (method/1_importance_evaluation.py and
method/2_neuron_identification.py of qqqqqqqzx/The-Achilles-Heel-of-LLMs, checked out by run.sh into $AUTHORS_DIR;
their code is never copied into this repository) on CPU in fp32. The only change is the model loading
glue: from_pretrained gets torch_dtype=float32 and no device_map / max_memory (their code asks for float16 and
device_map="auto" over the GPUs). Everything else, arguments included, is theirs.

    python run_authors.py stage1 --model_path M --input_text T --noise_scale 5 --num_samples 100 --output_file F
    python run_authors.py stage2 --model_path M --neuron_file F --test_text T --output_file G
"""
import os
import runpy
import sys
import time
from pathlib import Path

import torch
import transformers

_orig = transformers.AutoModelForCausalLM.from_pretrained


def _fp32_cpu(path, *args, **kw):
    kw["torch_dtype"] = torch.float32
    kw.pop("device_map", None)
    kw.pop("max_memory", None)
    return _orig(path, *args, **kw)


transformers.AutoModelForCausalLM.from_pretrained = _fp32_cpu
torch.set_num_threads(2)

stage = sys.argv[1]
script = Path(os.environ["AUTHORS_DIR"]) / "method" / {"stage1": "1_importance_evaluation.py",
                                                        "stage2": "2_neuron_identification.py"}[stage]
sys.argv = [str(script)] + sys.argv[2:]
t0 = time.perf_counter()
runpy.run_path(str(script), run_name="__main__")
print(f"GLUE {stage} wall_s={time.perf_counter() - t0:.2f}", file=sys.stderr)
