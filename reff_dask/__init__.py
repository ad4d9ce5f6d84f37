"""reff_dask: TEMPy-ReFF responsibility-based flexible fitting of atomic models into
cryo-EM maps, with maps as chunked Dask arrays and work spread over a Dask cluster."""

__version__ = "0.1.0"
