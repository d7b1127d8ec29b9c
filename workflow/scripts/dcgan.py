from ferbench import jobs
from ferbench.snakemake_io import logged

with logged(snakemake):
    jobs.dcgan_fold(
        snakemake.input.faces,
        snakemake.input.folds,
        int(snakemake.wildcards.fold),
        snakemake.params.options,
        snakemake.params.seed,
        snakemake.output.array,
        snakemake.output.table,
        snakemake.output.samples,
        threads=snakemake.threads,
        device=snakemake.params.device,
    )
