from ferbench.privacy import training
from ferbench.snakemake_io import logged

with logged(snakemake):
    info = training.train_fold(
        snakemake.input.faces,
        snakemake.input.folds,
        int(snakemake.wildcards.fold),
        snakemake.output.model,
        snakemake.output.accuracy,
    )
    print(info)
