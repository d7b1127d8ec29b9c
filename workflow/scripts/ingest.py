from ferbench import jobs, paths
from ferbench.snakemake_io import logged

with logged(snakemake):
    dataset = snakemake.params.dataset
    root = paths.dataset_root(dataset, snakemake.input.get("raw") or None)
    counts = jobs.ingest(dataset, root, snakemake.output.manifest, snakemake.output.quarantine)
    print(counts)
