from ferbench import jobs, paths
from ferbench.snakemake_io import logged

with logged(snakemake):
    dataset = snakemake.params.dataset
    stats = jobs.detect(
        snakemake.wildcards.dataset,
        dataset,
        paths.dataset_root(dataset, snakemake.input.get("raw") or None),
        snakemake.input.manifest,
        dict(snakemake.output.items()),
        threads=snakemake.threads,
        detections=snakemake.input.get("detections") or None,
    )
    print(stats)
