from ferbench import jobs
from ferbench.snakemake_io import logged

with logged(snakemake):
    files = list(snakemake.input.predictions)
    folds = snakemake.params.folds
    statistics = jobs.compare_study(
        list(snakemake.input.summaries),
        [files[i : i + folds] for i in range(0, len(files), folds)],
        snakemake.input.folds,
        snakemake.output[0],
        snakemake.config,
    )
    for pair in statistics["pairs"]:
        difference = pair["accuracy"]
        print(f"{pair['a']} - {pair['b']}: accuracy {difference['mean']:+.4f}")
