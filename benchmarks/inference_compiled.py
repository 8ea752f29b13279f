"""One forward of a sase model without gradients, eager and under torch.compile, on one device.

    python benchmarks/inference_compiled.py ATTENTION MODEL BATCH SIZE [--mode MODE]
    python benchmarks/inference_compiled.py paper resnet50 64 224 --mode reduce-overhead   # on the GPU

Compiles first (the compile time is that of the first two forwards), then times eager and compiled
forwards in turn, 7 rounds, and prints the medians. One model per process, which fits a short GPU lease;
`sase bench` measures the forward of several attentions interleaved in one run.
"""
import argparse
import statistics
import time

import torch

import sase


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("attention")
    parser.add_argument("model")
    parser.add_argument("batch", type=int)
    parser.add_argument("size", type=int)
    parser.add_argument("--mode", default="default", help="torch.compile mode: default | reduce-overhead | ...")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    net = sase.create_model(args.model, attention=args.attention, num_classes=1000).to(device).eval()
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    compiled = torch.compile(net, mode=args.mode)

    @torch.no_grad()
    def timed(model) -> float:
        sync()
        start = time.perf_counter()
        model(x)
        sync()
        return time.perf_counter() - start

    compile_s = timed(compiled) + timed(compiled)
    timed(net), timed(net)  # eager warm-up (cuDNN's choice of kernels)
    eager, fast = [], []
    for _ in range(args.rounds):
        eager.append(timed(net))
        fast.append(timed(compiled))
    print(f"{args.attention} {args.model} b{args.batch} {args.size} inference: eager "
          f"{1e3 * statistics.median(eager):.1f} ms, compiled ({args.mode}) {1e3 * statistics.median(fast):.1f} ms, "
          f"compile {compile_s:.0f} s", flush=True)


if __name__ == "__main__":
    main()
