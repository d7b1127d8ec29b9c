from ferbench import jobs
from ferbench.snakemake_io import logged

with logged(snakemake):
    jobs.fetch(snakemake.params.dataset, snakemake.output[0], snakemake.params.seed)
