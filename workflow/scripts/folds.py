from ferbench import jobs
from ferbench.snakemake_io import logged

with logged(snakemake):
    folds = jobs.make_folds(
        snakemake.input.table,
        snakemake.params.protocol,
        snakemake.params.seed,
        snakemake.output[0],
        snakemake.input.get("test_table") or None,
    )
    print(folds.groupby(["fold", "role"]).size().to_string())
