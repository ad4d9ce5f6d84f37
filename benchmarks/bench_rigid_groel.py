"""Rigid-body stage on a hinge motion (issue 11): GroEL (EMD-1997, 7 A, the shared 14-mer fit),
the apical domains (residues 191-376) of the first two chains turned 25 deg about their hinge
(the axis through the CA centroids of residues 188-192 and 374-378), then fitted back with those
two domains as the groups (user selections; every other atom held). Prints the apical CA RMSD
to the deposited fit before and after, and the time.

    python benchmarks/bench_rigid_groel.py          # ~3 min on 2 cores
    python benchmarks/bench_rigid_groel.py --auto   # every chain's automatic domains as the groups
"""
import sys
import time

import numpy as np

from reff_dask.io.maps import read_map
from reff_dask.io.models import atom_table, read_structure
from reff_dask.rigid import RigidSettings, rigid_fit

from _machine import DATA  # noqa: E402  (benchmarks/ is on sys.path)

GROEL = DATA.parent / "emd_1997_groel"
m = read_map(str(GROEL / "emd_1997.map.gz"), 64); m.data = m.data.persist()
st = read_structure(str(GROEL / "1oel_14mer_fit_emd1997.pdb.gz"))
at = atom_table(st)
info = [(ch.name, r.seqid.num, a.name) for ch in st[0] for r in ch for a in r]
chain = np.array([i[0] for i in info]); num = np.array([i[1] for i in info]); name = np.array([i[2] for i in info])
ca = name == "CA"
xyz = at.xyz.copy(); groups = np.full(len(xyz), -1)
def rot(axis, deg):
    a = axis/np.linalg.norm(axis); k = np.array([[0,-a[2],a[1]],[a[2],0,-a[0]],[-a[1],a[0],0]]); t = np.radians(deg)
    return np.eye(3) + np.sin(t)*k + (1-np.cos(t))*k@k
names = sorted(set(chain))[:2]
for g, c in enumerate(names):
    dom = (chain == c) & (num >= 191) & (num <= 376)
    h1 = at.xyz[(chain == c) & ca & (num >= 188) & (num <= 192)].mean(0)
    h2 = at.xyz[(chain == c) & ca & (num >= 374) & (num <= 378)].mean(0)
    xyz[dom] = (at.xyz[dom] - h1) @ rot(h2 - h1, 25.0).T + h1
    groups[dom] = g
rms = lambda x, sel: float(np.sqrt(np.mean(np.sum((x[sel]-at.xyz[sel])**2, 1))))
for g in range(2):
    print(names[g], "apical CA RMSD start", rms(xyz, (groups == g) & ca))
t = time.time()
if "--auto" in sys.argv:  # automatic domains of every chain as the groups instead
    from reff_dask.domains import auto_domains

    fit_groups, dom_names = auto_domains(st)
    print(len(dom_names), "automatic domains, e.g.", dom_names[:4])
else:
    fit_groups = groups
res = rigid_fit(m, xyz, at.weight, fit_groups, RigidSettings(7.0))
print("s", round(time.time()-t, 1), "iterations", len(res.history))
for g in range(2):
    print(names[g], "apical CA RMSD final", rms(res.xyz, (groups == g) & ca))
print("rest (unmoved atoms)", rms(res.xyz, (groups < 0) & ca))
