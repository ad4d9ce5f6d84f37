"""Fuzz suite of bad inputs: every one gives one line, exit 2, nothing written, no cluster started.

Each case builds its own bad input (a damaged MRC header, a model with a defect, an option out of
range, an unusable output path or scheduler) from the bundled example and runs ``reff-dask`` in
this process with cluster creation replaced by a failure: so each case also proves its check
runs before any cluster starts. Cases that need a running job (Ctrl-C, warnings) are at the end.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import gemmi
import numpy as np
import pytest

from reff_dask.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "emd_3488"

# MRC header fields: (byte offset, struct format)
H = {"nx": (0, "i"), "ny": (4, "i"), "nz": (8, "i"), "mode": (12, "i"), "mx": (28, "i"), "my": (32, "i"),
     "mz": (36, "i"), "cella": (40, "3f"), "cellb": (52, "3f"), "axes": (64, "3i"), "origin": (196, "3f")}


@pytest.fixture(scope="module")
def good_mrc(tmp_path_factory) -> bytes:
    """The example map as uncompressed MRC bytes (100^3 float32)."""
    return gzip.decompress((EXAMPLE / "emd_3488.map.gz").read_bytes())


class Ctx:
    """Paths and builders for one case; everything lives under ``tmp``."""

    def __init__(self, tmp: Path, raw: bytes):
        self.tmp, self.raw = tmp, raw
        self.model = str(EXAMPLE / "5ni1.pdb")
        self.out = str(tmp / "out")
        self._map: str | None = None

    @property
    def map(self) -> str:
        if self._map is None:
            self._map = self.mrc("good.mrc")
        return self._map

    def mrc(self, name: str = "bad.mrc", data: np.ndarray | None = None, gz: bool = False, cut: int | None = None,
            **fields) -> str:
        raw = bytearray(self.raw)
        if data is not None:
            raw[1024:] = np.asarray(data, "<f4").tobytes()
        for key, value in fields.items():
            off, fmt = H[key]
            struct.pack_into("<" + fmt, raw, off, *(value if isinstance(value, tuple) else (value,)))
        raw = bytes(raw[:cut]) if cut is not None else bytes(raw)
        p = self.tmp / name
        p.write_bytes(gzip.compress(raw) if gz else raw)
        return str(p)

    def values(self) -> np.ndarray:
        return np.frombuffer(self.raw, "<f4", offset=1024).reshape(100, 100, 100).copy()

    def file(self, name: str, content: str | bytes) -> str:
        p = self.tmp / name
        (p.write_bytes if isinstance(content, bytes) else p.write_text)(content)
        return str(p)

    def structure(self) -> gemmi.Structure:
        return gemmi.read_structure(self.model)

    def pdb(self, st: gemmi.Structure, name: str = "bad.pdb") -> str:
        p = self.tmp / name
        st.write_pdb(str(p))
        return str(p)

    def lines(self, edit, name: str = "bad.pdb") -> str:
        """The example PDB with ``edit(list of lines)`` applied."""
        lines = Path(self.model).read_text().splitlines()
        return self.file(name, "\n".join(edit(lines)) + "\n")

    def zarr(self, name: str = "bad.zarr", data: np.ndarray | None = None, attrs: dict | None = None) -> str:
        import zarr

        p = self.tmp / name
        data = self.values() if data is None else data
        z = zarr.open_array(str(p), mode="w", shape=data.shape, dtype="f4", chunks=(50,) * data.ndim)
        z[...] = data
        z.attrs.update({"voxel_size": [1.05] * 3, "origin": [0.0] * 3, "axis_order": "zyx"} if attrs is None
                       else attrs)
        return str(p)

    def job(self, cmd: str, *extra, m: str | None = None, p: str | None = None, r="3.2") -> list[str]:
        return [cmd, "-m", m or self.map, "-p", p or self.model, "-r", str(r), "-o", self.out, *map(str, extra)]


def _atoms(lines):
    return [i for i, l in enumerate(lines) if l.startswith(("ATOM", "HETATM"))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _shift(st: gemmi.Structure, dx: float) -> gemmi.Structure:
    st[0].transform_pos_and_adp(gemmi.Transform(gemmi.Mat33(), gemmi.Vec3(dx, 0, 0)))
    return st


def _zero_b(st: gemmi.Structure) -> gemmi.Structure:
    for ch in st[0]:
        for res in ch:
            for at in res:
                at.b_iso = 0.0
    return st


def _edit_atom(field_slice: slice, text: str, which: int = 0):
    def edit(lines):
        i = _atoms(lines)[which]
        lines[i] = lines[i][:field_slice.start] + text.rjust(field_slice.stop - field_slice.start) + lines[i][field_slice.stop:]
        return lines
    return edit


def _nan_block(c: Ctx) -> np.ndarray:
    v = c.values()
    v[:] = np.nan
    return v


# name -> (build(ctx) -> argv, substrings the one line must hold ('{map}', '{model}', '{out}' filled in))
CASES: dict[str, tuple] = {}


def case(name: str, *expect: str):
    def deco(fn):
        CASES[name] = (fn, expect)
        return fn
    return deco


# ---------------------------------------------------------------- options, each out of its range
for _cmd, _opt, _val, _want in [
    ("refine", "--workers", "-1", ">= 0"), ("bfactor", "--workers", "two", "integer"),
    ("bfactor", "--iterations", "-1", ">= 1"), ("bfactor", "--iterations", "0", ">= 1"),
    ("bfactor", "--residue-iterations", "-1", ">= 0"), ("bfactor", "--sigma-max", "0", "> 0"),
    ("bfactor", "--sigma-max", "-1", "> 0"), ("bfactor", "--sigma-max", "nan", "> 0"), ("bfactor", "--sigma-min", "-0.5", "> 0"),
    ("bfactor", "--chunks", "0", "positive"), ("bfactor", "--chunks", "1,2", "three"), ("bfactor", "--chunks", "a", "positive"),
    ("refine", "--steps", "0", ">= 1"), ("refine", "--steps", "-5", ">= 1"), ("refine", "--k-gmm", "-1", ">= 0"),
    ("refine", "--k-gmm", "inf", ">= 0"), ("refine", "--max-iterations", "0", ">= 1"), ("refine", "--max-iterations", "-1", ">= 1"),
    ("refine", "--patience", "0", ">= 1"), ("refine", "--threads", "-1", ">= 0"), ("refine", "--preset", "turbo", "invalid choice"),
    ("refine", "--seed", "-1", ">= 0"), ("segment", "--threshold", "2", "[0, 1)"), ("segment", "--threshold", "-0.1", "[0, 1)"),
    ("segment", "--threshold", "1", "[0, 1)"), ("score", "--window", "0", ">= 1"), ("score", "--window", "-3", ">= 1"),
    ("score", "--loqfit-cap", "0", "> 0"), ("score", "--contour", "nan", "finite"), ("ensemble", "--max-members", "0", ">= 1"),
    ("ensemble", "--k-ens", "-1", ">= 0"), ("ensemble", "--md-steps", "-1", ">= 0"),
    ("ensemble", "--minimise-iterations", "-1", ">= 0"), ("ensemble", "--patience", "0", ">= 1"),
    ("ensemble", "--member-width", "foo", "invalid choice"), ("bfactor", "--jobs", "0", ">= 1"),
    ("bfactor", "--job-cores", "0", ">= 1"), ("bfactor", "--cluster", "kubernetes", "invalid choice"),
    ("bfactor", "--frobnicate", "1", "unrecognized"),
]:
    def _opt_case(c, cmd=_cmd, opt=_opt, val=_val):
        return [cmd, "-m", "x.mrc", "-p", "y.pdb", "-r", "3", "-o", c.out, f"{opt}={val}"]

    case(f"option {_cmd} {_opt}={_val}", _opt.lstrip("-") if _opt != "--frobnicate" else "frobnicate", _want)(_opt_case)

for _val in ("0", "-3", "nan", "inf", "100", "abc"):
    case(f"option resolution {_val}", "resolution", _val)(lambda c, v=_val: ["bfactor", "-m", "x", "-p", "y", "-r", v,
                                                                            "-o", c.out])


@case("option missing -m", "required", "-m/--map")
def _(c):
    return ["refine", "-p", c.model, "-r", "3", "-o", c.out]


@case("option sigma-min above sigma-max", "--sigma-min 3", "--sigma-max 2.5")
def _(c):
    return c.job("bfactor", "--sigma-min", "3")


@case("option min-members above max-members", "--min-members 5", "--max-members 3")
def _(c):
    return c.job("ensemble", "--min-members", "5", "--max-members", "3")


@case("composite -p twice for three maps", "-p/--model", "2 times for 3 maps")
def _(c):
    return ["composite", "-m", c.map, "-m", c.map, "-m", c.map, "-p", c.model, "-p", c.model, "-r", "3.2",
            "-o", c.out + ".mrc"]


@case("composite -r twice for three maps", "-r/--resolution", "2 times for 3 maps")
def _(c):
    return ["composite", "-m", c.map, "-m", c.map, "-m", c.map, "-p", c.model, "-r", "3.2", "-r", "3",
            "-o", c.out + ".mrc"]


@case("composite -o out.txt", "out.txt", ".mrc")
def _(c):
    return ["composite", "-m", c.map, "-p", c.model, "-r", "3.2", "-o", str(c.tmp / "out.txt")]


@case("composite --use-model-b with one model", "{model}", "one model per map")
def _(c):
    return ["composite", "-m", c.map, "-m", c.map, "-p", c.model, "-r", "3.2", "-o", c.out + ".mrc", "--use-model-b"]


# ---------------------------------------------------------------- output paths
@case("outdir is a file", "{out}", "not a folder")
def _(c):
    Path(c.out).write_text("x")
    return c.job("bfactor")


@case("outdir under a file", "is a file", "not a folder")
def _(c):
    Path(c.out).write_text("x")
    c.out = c.out + "/sub"
    return c.job("score")


@case("outdir not writable", "/sys/", "cannot write")
def _(c):
    c.out = "/sys/reff-dask-out"
    return c.job("bfactor")


@case("composite output is a folder", "is a folder")
def _(c):
    (c.tmp / "dir.mrc").mkdir()
    return ["composite", "-m", c.map, "-p", c.model, "-r", "3.2", "-o", str(c.tmp / "dir.mrc")]


@case("convert store is a file", "store.zarr", "is a file")
def _(c):
    return ["convert", c.map, c.file("store.zarr", "x")]


@case("validate outdir is a file", "not a folder")
def _(c):
    return ["validate", "-p", c.model, "-o", c.file("v.out", "x")]


# ---------------------------------------------------------------- scheduler and TLS
@case("scheduler file missing", "sched.json", "no such scheduler file")
def _(c):
    return c.job("bfactor", "--scheduler", str(c.tmp / "sched.json"))


@case("scheduler file garbage", "sched.json", "not a Dask scheduler file")
def _(c):
    return c.job("bfactor", "--scheduler", c.file("sched.json", "not json"))


@case("scheduler file without address", "sched.json", "not a Dask scheduler file")
def _(c):
    return c.job("bfactor", "--scheduler", c.file("sched.json", json.dumps({"type": "Scheduler"})))


@case("scheduler nothing listening", "no Dask scheduler answers")
def _(c):
    return c.job("refine", "--scheduler", f"tcp://127.0.0.1:{_free_port()}")


@case("scheduler file pointing nowhere", "sched.json", "no Dask scheduler answers")
def _(c):
    return c.job("score", "--scheduler", c.file("sched.json", json.dumps({"address": f"tcp://127.0.0.1:{_free_port()}"})))


@case("scheduler address without host", "lacks a host or port")
def _(c):
    return c.job("bfactor", "--scheduler", "tcp://:8786")


@case("scheduler unknown protocol", "unknown scheduler protocol")
def _(c):
    return c.job("bfactor", "--scheduler", "foo://host:1")


@case("tls-dir missing", "tls", "lacks")
def _(c):
    return c.job("bfactor", "--tls-dir", str(c.tmp / "tls"))


@case("tls-dir empty", "tls", "ca.pem")
def _(c):
    (c.tmp / "tls").mkdir()
    return c.job("bfactor", "--tls-dir", str(c.tmp / "tls"))


# ---------------------------------------------------------------- maps: MRC files
@case("map missing", "nope.mrc", "no such file")
def _(c):
    return c.job("bfactor", m=str(c.tmp / "nope.mrc"))


@case("map is a folder", "folder")
def _(c):
    (c.tmp / "dir.mrc").mkdir()
    return c.job("bfactor", m=str(c.tmp / "dir.mrc"))


@case("map empty file", "{map}", "MRC")
def _(c):
    c._map = c.file("empty.mrc", b"")
    return c.job("bfactor")


@case("map text file", "{map}", "MRC")
def _(c):
    c._map = c.file("text.mrc", "hello\n" * 300)
    return c.job("refine")


@case("map garbage bytes", "{map}")
def _(c):
    c._map = c.file("garbage.mrc", np.random.default_rng(1).bytes(5000))
    return c.job("bfactor")


@case("map header cut", "{map}", "MRC")
def _(c):
    c._map = c.mrc(cut=500)
    return c.job("score")


@case("map data truncated", "{map}", "truncated")
def _(c):
    c._map = c.mrc(cut=1024 + 4 * 1000)
    return c.job("bfactor")


@case("map gz truncated", "{map}", "truncated")
def _(c):
    p = c.tmp / "cut.map.gz"
    p.write_bytes(gzip.compress(c.raw)[:20000])
    c._map = str(p)
    return c.job("bfactor")


@case("map gz of garbage", "{map}")
def _(c):
    c._map = c.file("g.map.gz", gzip.compress(np.random.default_rng(2).bytes(3000)))
    return c.job("bfactor")


for _name, _fields, _want in [
    ("nx 0", {"nx": 0}, "non-positive map size"), ("ny negative", {"ny": -5}, "non-positive map size"),
    ("absurd size", {"nx": 100000, "ny": 100000, "nz": 100000}, "absurd map size"),
    ("mode 3 complex", {"mode": 3}, "mode 3"), ("mode 101", {"mode": 101}, "mode 101"),
    ("non-orthogonal cell", {"cellb": (60.0, 90.0, 90.0)}, "non-orthogonal"),
    ("zero cell", {"cella": (0.0, 0.0, 0.0)}, "voxel size"), ("nan cell", {"cella": (np.nan, 105.0, 105.0)}, "voxel size"),
    ("negative cell", {"cella": (-105.0, 105.0, 105.0)}, "voxel size"), ("huge cell", {"cella": (1e9, 105.0, 105.0)}, "voxel size"),
    ("sampling 0", {"mx": 0, "my": 0, "mz": 0}, "sampling"), ("axes 1,1,3", {"axes": (1, 1, 3)}, "axis order"),
    ("axes 4,5,6", {"axes": (4, 5, 6)}, "axis order"), ("nan origin", {"origin": (np.nan, 0.0, 0.0)}, "origin"),
    ("inf origin", {"origin": (0.0, np.inf, 0.0)}, "origin"),
]:
    case(f"map header {_name}", "{map}", _want)(
        lambda c, f=_fields: (setattr(c, "_map", c.mrc(**f)), c.job("bfactor"))[1])


@case("map one section", "{map}", "not a 3-D map")
def _(c):
    c._map = c.mrc(data=c.values()[:1], nz=1, mz=1, cut=1024 + 4 * 100 * 100)
    return c.job("bfactor")


for _name, _fill, _want in [
    ("all NaN", lambda v: v.fill(np.nan), "NaN or infinite"), ("one NaN", lambda v: v.__setitem__((5, 5, 5), np.nan), "1 of"),
    ("one inf", lambda v: v.__setitem__((0, 0, 0), np.inf), "NaN or infinite"), ("constant", lambda v: v.fill(3.0), "same value"),
    ("all zero", lambda v: v.fill(0.0), "same value"),
]:
    def _values_case(c, fill=_fill, cmd="bfactor"):
        v = c.values()
        fill(v)
        c._map = c.mrc(data=v)
        return c.job(cmd)

    case(f"map values {_name}", "{map}", _want)(_values_case)
    case(f"map values {_name} (gz, score)", "{map}", _want)(
        lambda c, fill=_fill: (setattr(c, "_map", c.mrc("v.map.gz", data=(lambda v: (fill(v), v)[1])(c.values()),
                                                         gz=True)), c.job("score"))[1])


@case("convert all-NaN map", "{map}", "NaN")
def _(c):
    c._map = c.mrc(data=_nan_block(c))
    return ["convert", c.map, str(c.tmp / "store.zarr")]


@case("convert missing map", "nope.mrc", "no such file")
def _(c):
    return ["convert", str(c.tmp / "nope.mrc"), str(c.tmp / "store.zarr")]


# ---------------------------------------------------------------- maps: Zarr stores
@case("zarr empty folder", "{map}", "Zarr")
def _(c):
    (c.tmp / "empty.zarr").mkdir()
    c._map = str(c.tmp / "empty.zarr")
    return c.job("bfactor")


@case("zarr missing", "{map}", "Zarr")
def _(c):
    c._map = str(c.tmp / "none.zarr")
    return c.job("score")


@case("zarr without map metadata", "{map}", "metadata")
def _(c):
    c._map = c.zarr(attrs={})
    return c.job("bfactor")


@case("zarr axis order xyz", "{map}", "zyx")
def _(c):
    c._map = c.zarr(attrs={"voxel_size": [1.05] * 3, "origin": [0.0] * 3, "axis_order": "xyz"})
    return c.job("bfactor")


@case("zarr 2-D array", "{map}", "3-D")
def _(c):
    c._map = c.zarr(data=c.values()[0], attrs={"voxel_size": [1.05] * 3, "origin": [0.0] * 3, "axis_order": "zyx"})
    return c.job("bfactor")


@case("zarr negative voxel", "{map}", "voxel size")
def _(c):
    c._map = c.zarr(attrs={"voxel_size": [-1.05, 1.05, 1.05], "origin": [0.0] * 3, "axis_order": "zyx"})
    return c.job("bfactor")


@case("zarr nan origin", "{map}", "origin")
def _(c):
    c._map = c.zarr(attrs={"voxel_size": [1.05] * 3, "origin": [float("nan"), 0.0, 0.0], "axis_order": "zyx"})
    return c.job("bfactor")


@case("zarr all NaN", "{map}", "NaN")
def _(c):
    c._map = c.zarr(data=_nan_block(c))
    return c.job("score")


# ---------------------------------------------------------------- models
@case("model missing", "nope.pdb", "no such file")
def _(c):
    return c.job("bfactor", p=str(c.tmp / "nope.pdb"))


@case("model is a folder", "folder")
def _(c):
    (c.tmp / "m.pdb").mkdir()
    return c.job("refine", p=str(c.tmp / "m.pdb"))


@case("model empty file", "empty")
def _(c):
    return c.job("bfactor", p=c.file("e.pdb", ""))


@case("model END only", "no ATOM")
def _(c):
    return c.job("bfactor", p=c.file("e.pdb", "END\n"))


@case("model garbage bytes", "binary")
def _(c):
    return c.job("bfactor", p=c.file("g.pdb", np.random.default_rng(3).bytes(3000)))


@case("model text without atoms", "no ATOM")
def _(c):
    return c.job("score", p=c.file("t.pdb", "hello world\nnot a model\n"))


@case("mmCIF without Cartn_z", "lacks Cartn_z")
def _(c):
    tags = ["group_PDB", "id", "type_symbol", "label_atom_id", "label_comp_id", "label_asym_id", "label_seq_id",
            "Cartn_x", "Cartn_y"]
    rows = ["ATOM 1 N N ALA A 1 10.0 20.0", "ATOM 2 C CA ALA A 1 11.0 20.0"]
    text = "data_x\nloop_\n" + "".join(f"_atom_site.{t}\n" for t in tags) + "\n".join(rows) + "\n"
    return c.job("bfactor", p=c.file("noz.cif", text))


@case("mmCIF without atom_site", "no _atom_site")
def _(c):
    return c.job("bfactor", p=c.file("nosite.cif", "data_x\n_cell.length_a 10\n"))


@case("model NaN coordinate", "not finite")
def _(c):
    return c.job("bfactor", p=c.lines(_edit_atom(slice(30, 38), "nan")))


@case("model two MODELs", "2 models")
def _(c):
    st = c.structure()
    st.add_model(st[0].clone())
    st[1].num = 2
    return c.job("refine", p=c.pdb(st))


@case("model duplicated atoms", "duplicated atoms")
def _(c):
    return c.job("bfactor", p=c.lines(lambda ls: ls[:_atoms(ls)[3] + 1] + [ls[_atoms(ls)[3]]] + ls[_atoms(ls)[3] + 1:]))


@case("model occupancy -1", "negative occupancy")
def _(c):
    return c.job("bfactor", p=c.lines(_edit_atom(slice(54, 60), "-1.00")))


@case("model all occupancy zero", "zero occupancy")
def _(c):
    st = c.structure()
    for ch in st[0]:
        for res in ch:
            for at in res:
                at.occ = 0.0
    return c.job("bfactor", p=c.pdb(st))


@case("model unknown element", "unknown element")
def _(c):
    return c.job("bfactor", p=c.lines(_edit_atom(slice(76, 78), "Xx")))


@case("model outside the map", "outside the box")
def _(c):
    return c.job("bfactor", p=c.pdb(_shift(c.structure(), 300.0)))


@case("model mostly outside the map", "outside the box")
def _(c):
    return c.job("score", p=c.pdb(_shift(c.structure(), 60.0)))


@case("second model missing", "nope.pdb", "no such file")
def _(c):
    return ["score", "-m", c.map, "-p", c.model, "-p", str(c.tmp / "nope.pdb"), "-r", "3.2", "-o", c.out]


@case("second model outside", "far.pdb", "outside the box")
def _(c):
    return ["score", "-m", c.map, "-p", c.model, "-p", c.pdb(_shift(c.structure(), 300.0), "far.pdb"), "-r", "3.2",
            "-o", c.out]


@case("validate missing model", "nope.pdb", "no such file")
def _(c):
    return ["validate", "-p", str(c.tmp / "nope.pdb")]


@case("validate monlib missing", "monlib", "no such folder")
def _(c):
    return ["validate", "-p", c.model, "--monlib", str(c.tmp / "monlib")]


# ---------------------------------------------------------------- job rules
@case("segment group without =", "group", "NAME=SELECTION")
def _(c):
    return c.job("segment", "--group", "alpha")


@case("segment group selecting nothing", "selects no atom")
def _(c):
    return c.job("segment", "--group", "none=/1/Z")


@case("segment group bad selection", "bad selection")
def _(c):
    return c.job("segment", "--group", "x=/1/A/((((")


@case("segment use-model-b with B 0", "every B-factor")
def _(c):
    return c.job("segment", "--use-model-b", p=c.pdb(_zero_b(c.structure())))


@case("ensemble with B 0", "every B-factor")
def _(c):
    return c.job("ensemble", p=c.pdb(_zero_b(c.structure())))


@case("refine resume without checkpoint", "checkpoint")
def _(c):
    return c.job("refine", "--resume")


@case("refine monlib missing", "monlib", "no such folder")
def _(c):
    return c.job("refine", "--monlib", str(c.tmp / "monlib"))


@case("refine monlib not a library", "mon_lib_list")
def _(c):
    (c.tmp / "monlib").mkdir()
    return c.job("refine", "--monlib", str(c.tmp / "monlib"))


@case("refine unknown force field", "--forcefield", "OpenMM cannot load")
def _(c):
    return c.job("refine", "--forcefield", "nonsense99")


@case("refine implicit file missing", "--implicit", "OpenMM cannot load")
def _(c):
    return c.job("refine", "--implicit", str(c.tmp / "missing.xml"))


@case("ensemble unknown platform", "--platform", "no such platform")
def _(c):
    return c.job("ensemble", "--platform", "Nonsense")


@case("score contour above the map maximum", "--contour", "above the maximum")
def _(c):
    return c.job("score", "--contour", "1e9")


@case("composite grids differ, no resampling", "resampling is off")
def _(c):
    other = c.mrc("other.mrc", origin=(5.0, 0.0, 0.0))
    return ["composite", "-m", c.map, "-m", other, "-p", c.model, "-r", "3.2", "-o", c.out + ".mrc", "--no-resample"]


@case("composite map far away", "far.mrc", "does not overlap")
def _(c):
    far = c.mrc("far.mrc", origin=(1000.0, 0.0, 0.0))
    return ["composite", "-m", c.map, "-m", far, "-p", c.model, "-r", "3.2", "-o", c.out + ".mrc"]


@case("composite models of different size", "cut.pdb", "atoms")
def _(c):
    cut = c.lines(lambda ls: [l for i, l in enumerate(ls) if i not in set(_atoms(ls)[:10])], "cut.pdb")
    return ["composite", "-m", c.map, "-m", c.map, "-p", c.model, "-p", cut, "-r", "3.2", "-o", c.out + ".mrc"]


# ---------------------------------------------------------------- the runner


@pytest.fixture
def no_cluster(monkeypatch):
    """Cluster creation fails the test: every check must come before it."""
    import reff_dask.cluster

    def boom(*a, **k):
        raise AssertionError("a cluster was started before the input was refused")

    monkeypatch.setattr(reff_dask.cluster, "dask_client", boom)


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_case_count():
    assert len(CASES) >= 100


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, tmp_path, good_mrc, capsys, no_cluster):
    build, expect = CASES[name]
    c = Ctx(tmp_path, good_mrc)
    argv = build(c)
    before = _files(tmp_path)
    try:
        code = main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("reff-dask") and ": error: " in lines[0], lines[0]
    for want in expect:
        want = want.format(map=c._map or "", model=c.model, out=c.out)
        assert want.lower() in lines[0].lower(), (want, lines[0])
    assert _files(tmp_path) == before, "something was written"


# ---------------------------------------------------------------- cases that need a running job


def _cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "reff_dask.cli", *map(str, args)], stderr=subprocess.PIPE,
                            text=True, start_new_session=True, cwd=ROOT, **kw)


@pytest.mark.slow
def test_ctrl_c_one_line_exit_130(tmp_path):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) during the B stage: exit 130,
    one line, no traceback from the client or the workers, no output folder."""
    out = tmp_path / "out"
    p = _cli("bfactor", "-m", EXAMPLE / "emd_3488.map.gz", "-p", EXAMPLE / "5ni1.pdb", "-r", 3.2, "-o", out,
             "--workers", 2)
    seen = []
    for line in p.stderr:  # wait for the event: the first iteration is reported
        seen.append(line)
        if "iteration" in line:
            break
    assert any("iteration" in l for l in seen), "".join(seen)
    os.killpg(p.pid, signal.SIGINT)
    rest = p.stderr.read()
    assert p.wait() == 130, rest
    lines = [l for l in rest.splitlines() if l.strip()]
    assert len(lines) == 1 and "interrupted" in lines[0], rest
    assert "Traceback" not in rest
    assert not out.exists()


_GATHER_CHILD = """
import sys, time
from pathlib import Path


def blocked(path):
    Path(path).write_text("started")
    while True:
        time.sleep(0.05)


if __name__ == "__main__":
    import dask
    from reff_dask.cluster import dask_client
    try:
        with dask_client(workers=1) as client:
            dask.compute(dask.delayed(blocked, pure=False)(sys.argv[1]))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
"""


@pytest.mark.slow
def test_ctrl_c_while_gathering_adds_no_asyncio_report(tmp_path):
    """Ctrl-C while the client waits in a gather (where a busy machine's Ctrl-C test caught it):
    the gather that dies with the event loop must not add asyncio's "Task exception was never
    retrieved" report under the job's one line. The task reports that it runs; then SIGINT."""
    script, started = tmp_path / "child.py", tmp_path / "started"
    script.write_text(_GATHER_CHILD)
    p = subprocess.Popen([sys.executable, str(script), str(started)], stderr=subprocess.PIPE, text=True,
                         start_new_session=True, cwd=ROOT)
    while not started.exists() and p.poll() is None:
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGINT)
    err = p.stderr.read()
    assert p.wait() == 130 and err.strip() == "interrupted", err


def test_inverted_map_and_solvent_level_warned(tmp_path, good_mrc, capsys):
    """A sign-flipped map and one whose solvent sits far from zero: each gets its warning line."""
    from reff_dask.io.maps import map_stats, read_map
    from reff_dask.io.models import atom_table, read_structure
    from reff_dask.jobs.inputs import map_warnings

    c = Ctx(tmp_path, good_mrc)
    atoms = atom_table(read_structure(c.model))
    good = read_map(c.map, 50)
    assert map_warnings(good, map_stats(good), atoms) == []
    flipped = read_map(c.mrc("flip.mrc", data=-c.values()), 50)
    w = map_warnings(flipped, map_stats(flipped), atoms)
    assert len(w) == 1 and "inverted" in w[0]
    v = c.values()
    shifted = read_map(c.mrc("shift.mrc", data=v - 3 * v.std()), 50)
    w = map_warnings(shifted, map_stats(shifted), atoms)
    assert len(w) == 1 and "solvent level" in w[0] and "-3.0 sd" in w[0]


def test_b_cap_warning_counts_atoms():
    from reff_dask.jobs.inputs import b_cap_warning

    sigma = np.full(1000, 1.0)
    inside = np.ones(1000, bool)
    assert b_cap_warning(sigma, 2.5, inside) is None
    sigma[:50] = 2.5
    w = b_cap_warning(sigma, 2.5, inside)
    assert w is not None and w.startswith("50 of 1000 atoms") and "B 493" in w
    inside[:50] = False  # outside the map: not counted
    assert b_cap_warning(sigma, 2.5, inside) is None
