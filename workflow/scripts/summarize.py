from ferbench import jobs
from ferbench.snakemake_io import logged, study

with logged(snakemake):
    summary = jobs.summarize(
        study(snakemake.wildcards),
        snakemake.params.protocol,
        [
            {"metrics": m, "predictions": p, "history": h, "model": model}
            for m, p, h, model in zip(
                snakemake.input.metrics,
                snakemake.input.predictions,
                snakemake.input.histories,
                snakemake.input.models,
            )
        ],
        snakemake.input.folds,
        snakemake.output[0],
        snakemake.config,
    )
    print(f"accuracy {summary['accuracy_mean']:.4f} +- {summary['accuracy_std']:.4f}")
