"""Why the gpu preset's steps are 3-15x slower than the cost model: per stage, the step under fit (as the
pipeline's burst), a bare step (forward, backward, AdamW), and a profile of bare steps."""
import json, os, sys, time, tempfile
from pathlib import Path
import torch
from torch.profiler import profile, ProfilerActivity
from hart_mini.config import get_preset
from hart_mini.costs import stage_model, time_stage
from hart_mini.plan import STAGES
from hart_mini.model.data import Prerendered, ToyShapes
from hart_mini.model.text import CaptionTokenizer

name = sys.argv[1] if len(sys.argv) > 1 else "gpu"
dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
cuda = dev.type == "cuda"
if cuda:
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
preset = get_preset(name)
text = CaptionTokenizer.toyshapes(preset.transformer.text_len)
data = Prerendered(ToyShapes(preset.data, "train"), n=min(4096, len(ToyShapes(preset.data, "train"))), workers=8 if cuda else 0, device=dev, text=text)
out = Path(os.environ.get("OUT", "/tmp"))
sync = torch.cuda.synchronize if cuda else (lambda: None)
report = {}
for stage in STAGES:
    if stage.name in ("tokenizer_b", "discrete"):
        continue
    r = {}
    t = time.perf_counter()
    burst = time_stage(stage, preset, dev, data, Path(tempfile.mkdtemp()), 5, None)
    r["fit_ms"] = round(1e3 * burst["step_s"], 2); r["burst_wall_s"] = round(time.perf_counter() - t, 1)
    model, params, loss = stage_model(stage.name, preset, dev)
    B = getattr(preset, stage.train).batch_size
    batch = data.batch(range(B))
    opt = torch.optim.AdamW(params, lr=1e-4, fused=cuda)
    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            v, _ = loss(batch)
        v.backward(); opt.step()
    for _ in range(3): step()
    sync(); t = time.perf_counter()
    for _ in range(5): step()
    sync(); r["bare_ms"] = round((time.perf_counter() - t) / 5 * 1e3, 2)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        for _ in range(3): step()
        sync()
    ka = prof.key_averages()
    dev_attr = "self_device_time_total" if hasattr(ka[0], "self_device_time_total") else "self_cuda_time_total"
    r["gpu_busy_ms_per_step"] = round(sum(getattr(e, dev_attr) for e in ka) / 3 / 1e3, 2)
    r["ops_per_step"] = sum(e.count for e in ka if e.key.startswith("aten::")) // 3
    r["top_cpu"] = [(e.key, e.count // 3, round(e.self_cpu_time_total / 3 / 1e3, 2)) for e in
                    sorted(ka, key=lambda e: -e.self_cpu_time_total)[:12]]
    r["top_gpu"] = [(e.key[:90], e.count // 3, round(getattr(e, dev_attr) / 3 / 1e3, 2)) for e in
                    sorted(ka, key=lambda e: -getattr(e, dev_attr))[:12]]
    report[stage.name] = r
    print(stage.name, json.dumps({k: v for k, v in r.items() if not k.startswith("top")}), flush=True)
    for k in ("top_cpu", "top_gpu"):
        for row in r[k]:
            print("   ", k, row, flush=True)
    (out / "profile.json").write_text(json.dumps(report, indent=1))
