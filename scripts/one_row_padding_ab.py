"""Side by side in one process: an fp32 Qwen2.5-1.5B target's forward costs (1-4 tokens after 128 cached)
with one-row products computed as they are and as the row twice (runtime/cpu/linear.py,
one_row_padding_pays), alternated twice, in the orientation this machine's calibration chose.

    python scripts/one_row_padding_ab.py
"""
from specdecode.models.load import load_model
from specdecode.runtime.calibrate import measure_forward_costs
from specdecode.runtime.cpu.linear import tune_linear_layers
from specdecode.runtime.runner import select_backend

target = load_model("qwen2.5-coder-1.5b-instruct", dtype="fp32")
orientation = target.linear_kernel.split(",")[0]
print("linear kernel as loaded:", target.linear_kernel)
for pad in (False, True, False, True):
    tune_linear_layers(target.model, orientation, pad_one_row=pad)
    costs = measure_forward_costs(target.model, select_backend(), sizes=(1, 2, 3, 4), context=128, rounds=3)
    print(f"{orientation}, {'one row padded' if pad else 'as is':14s} ms by tokens fed: {costs.table_ms()}", flush=True)
