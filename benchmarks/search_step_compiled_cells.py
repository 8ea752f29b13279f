"""The first-order search step with every supernet cell under torch.compile (inductor), against eager.

    python benchmarks/search_step_compiled_cells.py      # batch 64, 3x32x32, 2 threads, CPU

Prints the compile time (first two steps) and the step in plain ResNet-20 SGD-step units, medians of
interleaved rounds, as benchmarks/search_step.py counts them.
"""
import time, statistics, torch, torch.nn.functional as F, sys
torch.set_num_threads(2)
from sase.search import Architect, Supernet
from sase.cell import Cell
from sase import create_model
def build(compiled):
    torch.manual_seed(0)
    model = Supernet("resnet20", num_classes=10)
    if compiled:
        for m in model.modules():
            if isinstance(m, Cell):
                m.compile()
    opt = torch.optim.SGD(model.weight_parameters(), lr=0.025, momentum=0.9, weight_decay=5e-4)
    arch = Architect(model, opt, order=1)
    g = torch.Generator().manual_seed(1)
    mk = lambda: (torch.randn(64, 3, 32, 32, generator=g), torch.randint(0, 10, (64,), generator=g))
    tr, va = mk(), mk()
    def step():
        arch.step(tr, va)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(tr[0]), tr[1]).backward()
        opt.step()
    return step
def plain():
    torch.manual_seed(0)
    m = create_model("resnet20", num_classes=10); o = torch.optim.SGD(m.parameters(), lr=0.025, momentum=0.9)
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    def step():
        o.zero_grad(); F.cross_entropy(m(x), y).backward(); o.step()
    return step
def t(f, n=5):
    ts = []
    for _ in range(n):
        s = time.perf_counter(); f(); ts.append(time.perf_counter() - s)
    return statistics.median(ts)
p, e = plain(), build(False)
p(); e(); 
c = build(True)
s = time.perf_counter(); c(); c(); print("compile", time.perf_counter() - s, flush=True)
pt, et, ct = [], [], []
for _ in range(3):
    pt.append(t(p, 2)); et.append(t(e, 2)); ct.append(t(c, 2))
P = statistics.median(pt)
print(f"plain {P*1e3:.0f} ms; eager first order {statistics.median(et)*1e3:.0f} ms = {statistics.median(et)/P:.2f} units; "
      f"compiled cells {statistics.median(ct)*1e3:.0f} ms = {statistics.median(ct)/P:.2f} units", flush=True)
