from ferbench import jobs
from ferbench.snakemake_io import logged

with logged(snakemake):
    folds = jobs.make_folds(
        snakemake.input.table,
        snakemake.params.protocol,
        snakemake.params.seed,
        snakemake.output[0],
        snakemake.input.get("test_table") or None,
        dedupe_arrays=(
            (snakemake.input.dedupe_trained, snakemake.input.dedupe_tested)
            if "dedupe_trained" in snakemake.input.keys()
            else None
        ),
    )
    print(folds.groupby(["fold", "role"]).size().to_string())
