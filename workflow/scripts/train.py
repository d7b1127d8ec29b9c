from ferbench import jobs
from ferbench.snakemake_io import logged, study

with logged(snakemake):
    paths = {**dict(snakemake.input.items()), **dict(snakemake.output.items())}
    paths["checkpoint"] = snakemake.params.checkpoint
    info = jobs.train_fold(
        study(snakemake.wildcards),
        int(snakemake.wildcards.fold),
        paths,
        snakemake.config,
        snakemake.params.recipe,
        threads=snakemake.threads,
    )
    print(info)
