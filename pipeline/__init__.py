"""ewald's pipeline layer: files, parameters, steps, Dask graphs, clusters, reports and the CLI."""
