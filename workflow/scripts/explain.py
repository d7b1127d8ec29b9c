from ferbench import jobs
from ferbench.snakemake_io import logged, study

with logged(snakemake):
    paths = {**dict(snakemake.input.items()), **dict(snakemake.output.items())}
    info = jobs.explain_fold(
        study(snakemake.wildcards),
        snakemake.params.fold,
        paths,
        snakemake.config,
        threads=snakemake.threads,
    )
    print(f"maps {', '.join(info['maps'])}; t-SNE of {', '.join(info['representations'])}")
