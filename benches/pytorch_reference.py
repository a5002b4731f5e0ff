#!/usr/bin/env python3
"""The reference networks of `aestream bench` in PyTorch, timed the same way, for the
comparison the performance issue asks for. Not part of CI or `cargo bench`.

usage: python3 benches/pytorch_reference.py [--threads 2] [--seconds 5] [--device cpu|cuda]
                                            [--only conv-ae-ref:8,dense-ae-ref:64]
prints one JSON line per workload, with the fields of `aestream bench --json` (the CPU time
per call and the 512³ sgemm roofline included).
Needs torch (CPU, or a CUDA build for --device cuda): pip install torch numpy
"""
import argparse
import json
import resource
import time

import torch
from torch import nn


def conv_ae_ref():
    # Exactly `conv-ae-ref` (src/model/reference.rs): input 1×64×64.
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, 1, 1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
        nn.Conv2d(64, 64, 3, 2, 1), nn.ReLU(),
        nn.ConvTranspose2d(64, 64, 3, 2, 1, output_padding=1), nn.ReLU(),
        nn.ConvTranspose2d(64, 32, 3, 2, 1, output_padding=1), nn.ReLU(),
        nn.Conv2d(32, 1, 3, 1, 1), nn.Sigmoid(),
    )


def dense_ae_ref():
    # `dense-ae-ref`: 625-2000-1000-500-30-500-1000-2000-625, linear code, sigmoid output.
    dims = [625, 2000, 1000, 500, 30, 500, 1000, 2000, 625]
    layers = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if dims[i + 1] == 30:
            continue
        layers.append(nn.Sigmoid() if i == len(dims) - 2 else nn.ReLU())
    return nn.Sequential(*layers)


def cpu_seconds():
    """User + system CPU time of this process, all threads."""
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def time_it(seconds, f):
    """Like `time_it` in src/bench.rs: 0.5 s warm-up, then at least 3 calls and `seconds`;
    returns the sorted call times and the mean CPU time per call in ms."""
    start = time.perf_counter()
    f()
    while time.perf_counter() - start < 0.5:
        f()
    times = []
    cpu0 = cpu_seconds()
    start = time.perf_counter()
    while len(times) < 3 or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    cpu_ms = (cpu_seconds() - cpu0) * 1e3 / len(times)
    times.sort()
    return times, cpu_ms


def sgemm512(device):
    """Like `sgemm512_gflop_per_s` in src/bench.rs: the best of twelve 512³ f32 products."""
    a = torch.rand((512, 512), device=device)
    b = torch.rand((512, 512), device=device)
    best = float("inf")
    for _ in range(12):
        t = time.perf_counter()
        torch.mm(a, b)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * 512**3 / best / 1e9


def quantile_ms(times, q):
    return times[min(round((len(times) - 1) * q), len(times) - 1)] * 1e3


def bench(name, net, shape, batch, seconds, threads, device):
    torch.manual_seed(0)
    net = net.to(device)
    x = torch.rand((batch,) + shape, device=device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    loss_fn = nn.MSELoss()
    # A GPU runs kernels asynchronously: each timed call waits for its work (as `bench` does).
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def infer():
        with torch.no_grad():
            net(x)
        sync()

    def train():
        opt.zero_grad(set_to_none=True)
        loss_fn(net(x), x).backward()
        opt.step()
        sync()

    inf, inf_cpu = time_it(seconds, infer)
    tr, tr_cpu = time_it(seconds, train)
    p50, t50 = quantile_ms(inf, 0.5), quantile_ms(tr, 0.5)
    print(json.dumps({
        "model": name, "framework": f"pytorch {torch.__version__}", "batch": batch,
        "threads": threads, "device": device, "infer_images_per_s": batch / (p50 / 1e3),
        "train_steps_per_s": 1e3 / t50, "p50_ms": p50, "p99_ms": quantile_ms(inf, 0.99),
        "train_step_p50_ms": t50, "infer_cpu_ms": inf_cpu, "train_step_cpu_ms": tr_cpu,
        "sgemm512_gflop_per_s": sgemm512(device),
    }), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", default="conv-ae-ref:1,conv-ae-ref:8,conv-ae-ref:32,dense-ae-ref:64",
                    help="comma-separated model:batch workloads")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    nets = {"conv-ae-ref": (conv_ae_ref, (1, 64, 64)), "dense-ae-ref": (dense_ae_ref, (625,))}
    for w in a.only.split(","):
        name, batch = w.split(":")
        net, shape = nets[name]
        bench(name, net(), shape, int(batch), a.seconds, a.threads, a.device)


if __name__ == "__main__":
    main()
