"""Map and model input: real files read right, bad files refused with the file and problem named."""

from __future__ import annotations

import gzip
import shutil

import mrcfile
import numpy as np
import pytest

from reff_dask.errors import InputError
from reff_dask.io.maps import MapGrid, check_map_values, map_stats, read_map, write_mrc, write_zarr
from reff_dask.io.models import atom_table, check_in_box, read_structure, updated_structure, write_structure


@pytest.fixture(scope="module")
def plain_mrc(tmp_path_factory, map_path):
    p = tmp_path_factory.mktemp("maps") / "emd_3488.mrc"
    with gzip.open(map_path) as f, open(p, "wb") as g:
        shutil.copyfileobj(f, g)
    return p


def test_gz_and_plain_read_the_same(real_map, plain_mrc):
    m = read_map(plain_mrc, chunks=32)
    assert m.grid.same_as(real_map.grid)
    assert m.grid.shape == (100, 100, 100)
    assert m.grid.voxel_size == pytest.approx((1.05, 1.05, 1.05), abs=1e-5)
    np.testing.assert_array_equal(m.data.compute(), real_map.data.compute())


def test_origin_field_places_crop_under_its_model(shared_case):
    """EMD-2566 crop: the MRC ORIGIN field puts the box around chain 9 (a reader ignoring it fails)."""
    case = shared_case("emd_2566")
    m = read_map(case / "emd_2566_crop_3j6b_chain9.mrc.gz")
    assert m.grid.origin == pytest.approx((356.44, 155.44, 159.46), abs=0.01)
    atoms = atom_table(read_structure(case / "3j6b_chain9_withH.pdb"))
    assert check_in_box(atoms, np.asarray(m.grid.origin), m.grid.upper, "model", "map") == 0


def test_permuted_axes_are_read_in_zyx(tmp_path, real_map):
    """A file stored with sections along x (MAPC=3, MAPR=2, MAPS=1) reads back in z, y, x order."""
    ref = real_map.data[:40, :30, :20].compute()
    p = tmp_path / "perm.mrc"
    with mrcfile.new(p) as mrc:
        mrc.set_data(np.ascontiguousarray(ref.transpose(2, 1, 0)))  # file [x][y][z]: cols are z
        mrc.header.mapc, mrc.header.mapr, mrc.header.maps = 3, 2, 1
        mrc.voxel_size = (1.0, 2.0, 3.0)
    m = read_map(p, chunks=16)
    assert m.grid.shape == (40, 30, 20)
    assert m.grid.voxel_size == pytest.approx((1.0, 2.0, 3.0))
    np.testing.assert_array_equal(m.data.compute(), ref)


def test_zarr_round_trip_keeps_grid_and_values(tmp_path, real_map):
    store = tmp_path / "map.zarr"
    write_zarr(real_map, store, chunks=32)
    z = read_map(store)
    assert z.grid.same_as(real_map.grid)
    assert z.data.chunks[0][0] == 32
    np.testing.assert_array_equal(z.data.compute(), real_map.data.compute())


def test_write_mrc_round_trip(tmp_path, real_map):
    grid = MapGrid(real_map.grid.shape, real_map.grid.voxel_size, (10.0, -5.0, 2.5))
    write_mrc(tmp_path / "o.mrc", real_map.data.rechunk(30), grid)
    back = read_map(tmp_path / "o.mrc")
    assert back.grid.same_as(grid)
    np.testing.assert_array_equal(back.data.compute(), real_map.data.compute())
    assert not list(tmp_path.glob(".*part"))  # no temporary left behind


def _mrc(path, data, **header):
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data.astype(np.float32))
        mrc.voxel_size = 1.0
        for k, v in header.items():
            setattr(mrc.header, k, v)
    return path


@pytest.mark.parametrize("make,problem", [
    (lambda p: p.write_text("this is not a map\n" * 100), "not a readable MRC"),
    (lambda p: p.write_bytes(p.read_bytes()[:5000]) if p.exists() else None, "no such file"),
])
def test_not_a_map(tmp_path, make, problem):
    p = tmp_path / "bad.mrc"
    make(p)
    with pytest.raises(InputError, match=problem) as e:
        read_map(p)
    assert str(p) in str(e.value)


def test_truncated_maps_are_refused(tmp_path, plain_mrc, map_path):
    cut = tmp_path / "cut.mrc"
    cut.write_bytes(plain_mrc.read_bytes()[:500_000])
    with pytest.raises(InputError, match="truncated") as e:
        read_map(cut)
    assert "cut.mrc" in str(e.value)
    gz = tmp_path / "cut.map.gz"
    gz.write_bytes(map_path.read_bytes()[:400_000])
    with pytest.raises(InputError, match="cut.map.gz"):
        read_map(gz)


def test_absurd_and_inconsistent_headers(tmp_path):
    p = _mrc(tmp_path / "big.mrc", np.zeros((4, 4, 4)))
    raw = bytearray(p.read_bytes())
    raw[0:12] = np.array([200000, 200000, 200000], dtype="<i4").tobytes()
    p.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="absurd map size"):
        read_map(p)
    raw[0:12] = np.array([40, 40, 40], dtype="<i4").tobytes()
    p.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="truncated"):
        read_map(p)


def test_non_orthogonal_and_zero_voxel_refused(tmp_path):
    p = _mrc(tmp_path / "skew.mrc", np.zeros((4, 4, 4)))
    with mrcfile.open(p, "r+") as mrc:
        mrc.header.cellb.gamma = 120.0
    with pytest.raises(InputError, match="non-orthogonal"):
        read_map(p)
    q = _mrc(tmp_path / "zero.mrc", np.zeros((4, 4, 4)))
    with mrcfile.open(q, "r+") as mrc:
        mrc.header.cella.x = 0.0
    with pytest.raises(InputError, match="voxel size"):
        read_map(q)


def test_nan_map_refused(tmp_path):
    data = np.random.default_rng(0).normal(size=(8, 8, 8))
    data[3, 4, 5] = np.nan
    m = read_map(_mrc(tmp_path / "nan.mrc", data))
    with pytest.raises(InputError, match="1 of 512 voxels are NaN"):
        check_map_values(m, map_stats(m))


def test_models_bad_and_good(tmp_path, real_structure, real_atoms, real_map):
    with pytest.raises(InputError, match="no such file"):
        read_structure(tmp_path / "missing.pdb")
    (tmp_path / "empty.pdb").write_text("REMARK nothing here\nEND\n")
    with pytest.raises(InputError, match="no ATOM/HETATM records"):
        read_structure(tmp_path / "empty.pdb")
    far = real_atoms.xyz + 500.0
    lower, upper = np.asarray(real_map.grid.origin), real_map.grid.upper
    with pytest.raises(InputError, match="outside the box"):
        check_in_box(type(real_atoms)(far, *[getattr(real_atoms, f) for f in
                                            ("weight", "b_input", "chain", "residue", "hydrogen", "chain_names")]),
                     lower, upper, "m.pdb", "map.mrc")
    assert check_in_box(real_atoms, lower, upper, "m.pdb", "map.mrc") == 0


def test_unknown_element_named(tmp_path, model_path):
    lines = model_path.read_text().splitlines()
    i = next(k for k, ln in enumerate(lines) if ln.startswith("ATOM"))
    lines[i] = lines[i][:76] + " Q" + lines[i][78:]
    (tmp_path / "x.pdb").write_text("\n".join(lines) + "\n")
    st = read_structure(tmp_path / "x.pdb")
    with pytest.raises(InputError, match="unknown element"):
        atom_table(st, tmp_path / "x.pdb")


def test_written_model_keeps_every_atom(tmp_path, real_structure, real_atoms):
    b = np.linspace(10, 300, len(real_atoms))
    paths = write_structure(updated_structure(real_structure, b_iso=b), tmp_path / "out")
    assert {p.suffix for p in paths} == {".cif", ".pdb"}
    for p in paths:
        back = atom_table(read_structure(p))
        assert len(back) == len(real_atoms)
        np.testing.assert_allclose(back.xyz, real_atoms.xyz, atol=1e-3)
        np.testing.assert_allclose(back.b_input, b, atol=0.01)


def _bad_model(tmp_path, real_structure, kind: str):
    import gemmi

    st = real_structure.clone()
    if kind == "two_models":
        second = st[0].clone()
        second.num = 2
        st.add_model(second)
    elif kind == "duplicate":
        res = st[0]["A"][0]
        res.add_atom(res[1])
    elif kind == "negative_occupancy":
        st[0]["A"][0][0].occ = -1.0
    path = tmp_path / f"{kind}.pdb"
    st.write_pdb(str(path))
    assert isinstance(st, gemmi.Structure)
    return path


@pytest.mark.parametrize("kind, problem", [("two_models", "2 models"),
                                           ("duplicate", "duplicated atoms without alternate-location labels: A/VAL1/CA"),
                                           ("negative_occupancy", "negative occupancy: A/VAL1/N")])
def test_ambiguous_models_are_refused_naming_the_problem(tmp_path, real_structure, kind, problem):
    """A second MODEL, an atom given twice without altloc, a negative occupancy: refused, not guessed at."""
    path = _bad_model(tmp_path, real_structure, kind)
    with pytest.raises(InputError, match=problem) as e:
        read_structure(path)
    assert str(path) in str(e.value)


def test_folder_as_model_is_named_as_such(tmp_path):
    with pytest.raises(InputError, match="a folder, not a PDB/mmCIF model file"):
        read_structure(tmp_path)


def test_widths_from_b_one_rule_for_every_job(real_atoms, model_path):
    """The one B column -> width rule (segment, composite --use-model-b, ensemble): sigma =
    sqrt(B / 8 pi^2) A, at least the floor; atoms without a usable B take the smallest width of
    the others; a column with no B at all is refused, naming the file."""
    from reff_dask.io.models import SIGMA_FLOOR, b_to_sigma, sigma_to_b, widths_from_b

    b = real_atoms.b_input.astype(float).copy()
    np.testing.assert_allclose(widths_from_b(b, model_path), b_to_sigma(b))
    np.testing.assert_allclose(sigma_to_b(widths_from_b(b, model_path)), b)
    b[:3] = [0.0, -5.0, np.nan]
    b[3] = 1e-6  # a delta function: floored
    w = widths_from_b(b, model_path)
    assert w[3] == SIGMA_FLOOR and np.all(w[:3] == w[3:].min())
    with pytest.raises(InputError, match="every B-factor is 0") as e:
        widths_from_b(np.zeros(5), model_path)
    assert str(model_path) in str(e.value)


def test_reports_are_strict_json(tmp_path):
    """Every job writes its report through jobs.common.write_json: NaN and inf become null and
    numpy numbers plain numbers, so strict JSON readers (jq, JavaScript, json.loads with
    parse_constant refusing NaN) take it."""
    import json

    from reff_dask.jobs.common import write_json

    path = tmp_path / "report.json"
    write_json(path, {"ccc": float("nan"), "n": np.int64(3), "x": np.float32(0.5), "v": np.array([1.0, np.inf]),
                      "rows": [(1.0, float("-inf"))]})

    def refuse(name):
        raise ValueError(name)

    got = json.loads(path.read_text(), parse_constant=refuse)
    assert got == {"ccc": None, "n": 3, "x": 0.5, "v": [1.0, None], "rows": [[1.0, None]]}
