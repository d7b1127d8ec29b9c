from ferbench import landmarks, paths
from ferbench.snakemake_io import logged

with logged(snakemake):
    dataset = snakemake.params.dataset
    counts = landmarks.run(
        dataset,
        paths.dataset_root(dataset, snakemake.input.get("raw") or None),
        snakemake.input.table,
        snakemake.input.array,
        snakemake.output.array,
        snakemake.output.samples,
    )
    print(f"landmarks per source: {counts}")
