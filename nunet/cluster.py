"""Filter chunked volumes (OME-Zarr, dask arrays) on a dask cluster: the public face of
:mod:`nunet.batch.cluster` (``nunet.cluster.filter_zarr``, ``filter_dask``)."""

from nunet.batch.cluster import filter_dask, filter_zarr

__all__ = ["filter_dask", "filter_zarr"]
