"""One position-refinement protocol on 5ME2 -> EMD-3488, judged against 5NI1 (issue 9's ablations).

In this process (threaded Dask, no cluster): B stage (cached per start model under --cache),
MD preparation, EM/MD loop, final stage; prints CCC (box, uniform width) and CA RMSD to the
reference per iteration, then CCC, CA RMSD and geometry (reff_dask.validation) of the best MD
model and of the final model, wall and CPU seconds.

    python benchmarks/bench_protocol.py NAME --set '{"preset": "minimise", "k_final": 200}'
    python benchmarks/bench_protocol.py NAME --no-library      # AMBER's own bonded geometry

--set takes RefineSettings fields as JSON (default: the fast preset, 2 OpenMM threads).
Results go to OUT/NAME.json and the final model to OUT/NAME.pdb.
"""
import argparse
import json
import os
import pickle
import time
import numpy as np, gemmi, dask
dask.config.set(scheduler="threads")
from reff_dask.jobs.inputs import load_inputs
from reff_dask.bfactor import BFactorSettings, refine_bfactors
from reff_dask.gmm.fit import model_ccc
import reff_dask.refine as RR
from reff_dask.refine import RefineSettings, refine_positions, minimise
from reff_dask.md.prepare import prepare_model
from reff_dask.io.models import updated_structure
from reff_dask.validation import validate_geometry
from reff_dask.gmm.mstep import uniform_sigma
ap = argparse.ArgumentParser()
ap.add_argument("name"); ap.add_argument("--set", default="{}")
ap.add_argument("--map", default="examples/emd_3488/emd_3488.map.gz"); ap.add_argument("--model", default="examples/emd_3488/5me2.pdb")
ap.add_argument("--ref", default="examples/emd_3488/5ni1.pdb"); ap.add_argument("-r", type=float, default=3.2)
ap.add_argument("--no-library", action="store_true", help="AMBER's own bonded terms, no library restraints")
ap.add_argument("--out", default="bench_protocol_out"); ap.add_argument("--cache", default="bench_protocol_out")
a = ap.parse_args()
kw = dict(preset="fast", threads=2); kw.update(json.loads(a.set))
t0 = time.time(); c0 = time.process_time()
inp = load_inputs(a.map, a.model, 64, a.r)
m, atoms, st = inp.map, inp.atoms, inp.structure
os.makedirs(a.out, exist_ok=True); os.makedirs(a.cache, exist_ok=True)
cache = os.path.join(a.cache, f"bstate_{os.path.basename(a.model)}.pkl")
if os.path.exists(cache):
    state = pickle.load(open(cache, "rb"))
else:
    state = refine_bfactors(m, atoms.xyz, atoms.weight, BFactorSettings(a.r), residue=atoms.residue).state
    pickle.dump(state, open(cache, "wb"))
prep = prepare_model(st, "amber14", None, library_geometry=not a.no_library)
ref = gemmi.read_structure(a.ref)
refca = {(ch.name, r.seqid.num): r.find_atom("CA", "*").pos for ch in ref[0] for r in ch if r.find_atom("CA", "*")}
def carmsd(xyz):
    d = []; k = 0
    for ch in st[0]:
        for r in ch:
            for at in r:
                if at.name == "CA" and (ch.name, r.seqid.num) in refca:
                    p = refca[(ch.name, r.seqid.num)]; d.append(np.sum((xyz[k] - [p.x, p.y, p.z]) ** 2))
                k += 1
    return float(np.sqrt(np.mean(d)))
_mc = RR.model_ccc
def _mc2(m_, xyz, w, sg):
    r = _mc(m_, xyz, w, sg); print(f"    ccc {r[0]:.4f} ca_rmsd {carmsd(xyz):.3f}", flush=True); return r
RR.model_ccc = _mc2
s = RefineSettings(a.r, **kw)
res = refine_positions(m, atoms.xyz, atoms.weight, state, prep, s)
RR.model_ccc = _mc
rounds = []
fin = minimise(m, res, atoms.weight, prep, s, rounds=rounds)
print("final rounds", [round(r["shift_rms_A"], 3) for r in rounds])
su = uniform_sigma(a.r)
out = {"name": a.name, "settings": kw, "iterations": len(res.history), "best_it": res.best_iteration,
       "final_rounds": len(rounds),
       "wall": time.time() - t0, "cpu": time.process_time() - c0}
for label, xyz in (("input", atoms.xyz), ("bestmd", res.xyz), ("final", fin)):
    g = validate_geometry(updated_structure(st, xyz=xyz)).overall
    out[label] = {"ccc": round(model_ccc(m, xyz, atoms.weight, su)[0], 4), "ca_rmsd": round(carmsd(xyz), 3),
                  **{k: (round(g[k], 4) if isinstance(g[k], float) else g[k]) for k in ("bond_rmsd_A", "angle_rmsd_deg", "angle_outliers", "twisted_peptides", "plane_outliers", "clashes")}}
    print(label, out[label], flush=True)
updated_structure(st, xyz=fin).write_pdb(os.path.join(a.out, f"{a.name}.pdb"))
with open(os.path.join(a.out, f"{a.name}.json"), "w") as fh:
    print(json.dumps(out), file=fh)
print("wall", out["wall"], "cpu", out["cpu"], "iters", out["iterations"], "best", res.best_iteration)
