"""Reading and writing maps (MRC/CCP4, Zarr) and models (PDB/mmCIF)."""
