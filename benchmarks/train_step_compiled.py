"""One SGD step (forward, backward, update) of a sase model, eager and under torch.compile, on one device.

    python benchmarks/train_step_compiled.py ATTENTION MODEL BATCH SIZE
    python benchmarks/train_step_compiled.py paper resnet20 128 32     # on the GPU when there is one

Prints the eager step (median of 7, before and after compiling), the compiled step (median of 7) and the
compile time (the first two compiled steps). `sase bench --compile-train` measures the same, interleaved
with the plain backbone; this script times one model alone, which fits a short GPU lease.
"""
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import sase


def main(attention: str, model_name: str, batch: int, size: int) -> None:
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    net = sase.create_model(model_name, attention=attention, num_classes=10).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(batch, 3, size, size, device=device), torch.randint(0, 10, (batch,), device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step(model) -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    def timed(model, n: int = 7) -> float:
        times = []
        for _ in range(n):
            sync()
            start = time.perf_counter()
            step(model)
            sync()
            times.append(time.perf_counter() - start)
        return 1e3 * statistics.median(times)

    for _ in range(2):
        step(net)
    eager = timed(net)
    compiled = torch.compile(net)
    start = time.perf_counter()
    step(compiled)
    step(compiled)
    sync()
    compile_s = time.perf_counter() - start
    fast = timed(compiled)
    print(f"{attention} {model_name} b{batch} {size}: eager {eager:.1f}/{timed(net):.1f} ms, compiled {fast:.1f} ms, "
          f"compile {compile_s:.0f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
