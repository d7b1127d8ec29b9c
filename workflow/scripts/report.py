from ferbench import jobs
from ferbench.snakemake_io import logged

with logged(snakemake):
    jobs.report(
        snakemake.input.summaries,
        snakemake.input.detections,
        snakemake.params.benchmarks,
        snakemake.input.samples,
        snakemake.output.html,
        snakemake.output.metrics,
        snakemake.params.study_config,
    )
