import dataclasses, sys, time
import numpy as np, torch
sys.path.insert(0, "/tmp/tests_run/..")
from dit_explore.engine.core.placement import candidates
from dit_explore.engine.core.plan import Plan, parse_order
from dit_explore.engine.core.resolve import resolve
from dit_explore.engine.core.sampling import resolve_settings
from dit_explore.engine.generate import Generator
from dit_explore.engine.models import load

REORDERED = Plan(orders=(("double", parse_order("0, 1, 2, 5, 5, 4, 3, [1-3]x2")),
                         ("single", parse_order("11, 10, [0-3], 4-9"))))
source = resolve("toy-flux")
settings = dataclasses.replace(resolve_settings(source.defaults), steps=4)
def mk(setting, resident=18, evict=True):
    places = candidates(source, 64, 64, None, dtype="bfloat16")
    p = None if setting == "full" else dataclasses.replace(places[setting], resident_blocks=resident, evict_for_encoding=evict)
    return Generator(load(source, torch.device("cuda"), torch.bfloat16, placement=p, compile=True))
def img(g, plan): return np.asarray(g.generate("a red circle", settings, plan).image).astype(int)
t = time.time()
g = mk("full")
a = {n: img(g, p) for n, p in (("id", Plan()), ("re", REORDERED))}
a2 = {n: img(g, p) for n, p in (("id", Plan()), ("re", REORDERED))}
print("full same load repeat:", {n: int(np.abs(a[n]-a2[n]).max()) for n in a}, flush=True)
del g; torch.cuda.empty_cache()
g = mk("full")
b = {n: img(g, p) for n, p in (("id", Plan()), ("re", REORDERED))}
print("full second load:", {n: int(np.abs(a[n]-b[n]).max()) for n in a}, flush=True)
del g; torch.cuda.empty_cache()
for setting, res, ev in (("offload", 18, True), ("offload", 18, False), ("offload", 18, True)):
    g = mk(setting, res, ev)
    c = {n: img(g, p) for n, p in (("id", Plan()), ("re", REORDERED))}
    c2 = {n: img(g, p) for n, p in (("id", Plan()), ("re", REORDERED))}
    print(setting, res, "evict", ev, "vs full:", {n: int(np.abs(a[n]-c[n]).max()) for n in a},
          "repeat:", {n: int(np.abs(c[n]-c2[n]).max()) for n in a}, flush=True)
    del g; torch.cuda.empty_cache()
print("wall", round(time.time()-t, 1))
