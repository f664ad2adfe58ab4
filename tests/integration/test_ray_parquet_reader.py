"""The Ray Data context every job sets up reads Parquet faithfully."""

from __future__ import annotations

import pyarrow as pa


def test_the_jobs_parquet_reader_returns_every_row_as_written(ray_cluster, prep_dir):
    """A Train run's context reads with Ray Data's first Parquet reader (2.60's default lists files
    in an extra task, ~2 s a read here): the train split comes back row for row as pyarrow reads it;
    jobs.prepare's context keeps the default reader."""
    import pyarrow.dataset as pads
    import ray

    from gref.ray_utils import data_context

    assert data_context().use_datasource_v2  # jobs.prepare's
    try:
        assert data_context(whole_split_reads=True) is ray.data.DataContext.get_current()
        assert not ray.data.DataContext.get_current().use_datasource_v2
        split = prep_dir / "sequences" / "train"
        read = ray.data.read_parquet(str(split)).materialize().to_arrow_refs()
    finally:
        data_context()  # the session's later datasets see the default reader again
    got = pa.concat_tables(ray.get(read)).sort_by("request_id")
    assert got.equals(pads.dataset(str(split)).to_table().sort_by("request_id"))
