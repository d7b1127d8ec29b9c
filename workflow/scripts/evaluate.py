from ferbench import jobs
from ferbench.snakemake_io import logged, study

with logged(snakemake):
    paths = {**dict(snakemake.input.items()), **dict(snakemake.output.items())}
    metrics = jobs.evaluate_fold(
        study(snakemake.wildcards),
        int(snakemake.wildcards.fold),
        paths,
        snakemake.config,
        threads=snakemake.threads,
    )
    print(f"accuracy {metrics['accuracy']:.4f} macro-F1 {metrics['macro_f1']:.4f}")
